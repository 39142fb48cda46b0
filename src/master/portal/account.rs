//! The account page: who you are, your password (local accounts) and your API tokens.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{
    CsrfOnly, DoneQuery, Peer, Session, notice, render, render_error, see_other, status_of,
};
use crate::master::Master;
use crate::master::actions::{ApiError, UserPatch};
use crate::model::account::AuthMethod;

type Shared = State<Arc<Master>>;

async fn account_page(
    master: &Master,
    session: &Session,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
    new_token: Option<(String, String)>,
) -> Response {
    let me = match master.me(&session.caller).await {
        Ok(me) => me,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let tokens = match master.list_tokens(&session.caller).await {
        Ok(t) => t,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    let this_session =
        crate::model::account::token_id(&crate::model::account::token_digest(&session.token));
    render(
        master,
        Some(session),
        "account.html",
        status,
        notice(done),
        error,
        minijinja::context! {
            me => me,
            local => me.auth == AuthMethod::Local,
            tokens => tokens,
            this_session => this_session,
            new_token => new_token.map(|(name, secret)| minijinja::context! { name => name, secret => secret }),
        },
    )
}

pub async fn account(
    State(master): Shared,
    session: Session,
    Query(query): Query<DoneQuery>,
) -> Response {
    account_page(
        &master,
        &session,
        StatusCode::OK,
        query.done.as_deref(),
        None,
        None,
    )
    .await
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    repeat: String,
}

pub async fn change_password(
    State(master): Shared,
    session: Session,
    Peer(peer): Peer,
    Form(form): Form<PasswordForm>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    let fail = |status, message: String| {
        let master = master.clone();
        let session = &session;
        async move { account_page(&master, session, status, None, Some(&message), None).await }
    };
    if form.password != form.repeat {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The two new passwords differ.".into(),
        )
        .await;
    }
    // The current password is asked again, so an unattended browser cannot change it (the
    // action checks it under the login throttle); every other session of the account ends.
    let user = session.caller.name().to_owned();
    let patch = UserPatch {
        password: Some(form.password.clone()),
        current_password: Some(form.current.clone()),
        ..Default::default()
    };
    match master
        .update_user(&session.caller, &user, &patch, &peer)
        .await
    {
        Ok(_) => see_other("/account", "password"),
        Err(ApiError::Throttled { retry_after }) => {
            fail(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many failed attempts. Wait {retry_after} seconds."),
            )
            .await
        }
        Err(ApiError::Input(e)) if e.code == "wrong_password" => {
            fail(
                StatusCode::FORBIDDEN,
                "Your current password is not right.".into(),
            )
            .await
        }
        Err(e) => fail(status_of(&e), e.to_string()).await,
    }
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
}

pub async fn create_token(
    State(master): Shared,
    session: Session,
    Form(form): Form<TokenForm>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    match master
        .create_api_token(&session.caller, form.name.trim())
        .await
    {
        // Shown once, on this answer only: it is stored as a digest.
        Ok(token) => {
            account_page(
                &master,
                &session,
                StatusCode::CREATED,
                None,
                None,
                Some((token.record.name, token.token)),
            )
            .await
        }
        Err(e) => {
            account_page(
                &master,
                &session,
                status_of(&e),
                None,
                Some(&e.to_string()),
                None,
            )
            .await
        }
    }
}

pub async fn revoke_token(
    State(master): Shared,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Some(r) = session.refuse_forged(&form.csrf) {
        return r;
    }
    match master.revoke_token(&session.caller, &id).await {
        Ok(()) => see_other("/account", "revoked"),
        Err(e) => {
            account_page(
                &master,
                &session,
                status_of(&e),
                None,
                Some(&e.to_string()),
                None,
            )
            .await
        }
    }
}
