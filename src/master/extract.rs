//! The API's request extractors: JSON bodies and query parameters whose problems answer in
//! the API's error format, and the authenticated caller ([`Auth`]), shared by the API and
//! the workspace hosts.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::actions::{ApiError, Caller};
use super::{Master, session};

/// A JSON body whose problems answer in the API's error format: 400 for what is not JSON,
/// 422 for JSON of the wrong shape.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = |message: String| {
            ApiError::Input(crate::model::vcluster::InputError {
                code: "invalid_body",
                field: "body".into(),
                message,
            })
        };
        // Every body is a JSON object: serde would also take an array for a struct,
        // field by field in order, which nobody means.
        let value = match Json::<serde_json::Value>::from_request(request, state).await {
            Ok(Json(value)) => value,
            Err(JsonRejection::JsonDataError(e)) => {
                return Err(invalid(format!(
                    "the request body does not fit: {}",
                    e.body_text()
                )));
            }
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "the request body must be JSON (Content-Type: application/json): {}",
                    e.body_text()
                )));
            }
        };
        if !value.is_object() {
            return Err(invalid("the request body must be a JSON object".into()));
        }
        serde_json::from_value(value)
            .map(Body)
            .map_err(|e| invalid(format!("the request body does not fit: {e}")))
    }
}

/// Query parameters, with problems answered in the API's error format.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// The authenticated caller: from `Authorization: Bearer <token>` (scripts), or from the
/// portal's session cookie (browsers), where changes and WebSockets must also pass the
/// same-origin rule of [`session`].
pub struct Auth(pub Caller);

impl FromRequestParts<Arc<Master>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        master: &Arc<Master>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(token) = session::bearer(&parts.headers) {
            return master.authenticate_login(token).await.map(Auth);
        }
        let Some(token) = session::session_from_cookies(&parts.headers) else {
            return Err(ApiError::Unauthenticated(
                "log in first: POST /api/v1/auth/login, then send Authorization: Bearer <token>"
                    .into(),
            ));
        };
        if !session::browser_request_allowed(&parts.method, &parts.headers, &token) {
            return Err(ApiError::Forbidden(
                "a browser request from another site: send it from the portal's own pages".into(),
            ));
        }
        master.authenticate_login(&token).await.map(Auth)
    }
}
