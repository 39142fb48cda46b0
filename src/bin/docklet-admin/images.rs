//! Users' images and the system images.

use anyhow::Result;
use docklet::master::actions::images::ImageView;
use docklet::master::actions::system_images::SystemImageView;

use crate::bus::*;
use crate::cli::*;
use crate::tables::*;

/// `owner/name` → its two parts.
pub(crate) fn split_pair<'a>(text: &'a str, what: &str) -> Result<(&'a str, &'a str), Failure> {
    text.split_once('/')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| usage(format!("{text:?}: give {what}")))
}

pub(crate) async fn image(action: ImageAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let bus = |e| failure(e, "master");
    let image: ImageView = match action {
        ImageAction::Save {
            cluster,
            node,
            name,
            description,
            force,
            no_wait,
        } => {
            let (user, cluster) = split_pair(&cluster, "USER/CLUSTER")?;
            let reply = master
                .save_image(user, cluster, node, &name, &description, force)
                .await
                .map_err(bus)?;
            if no_wait {
                from_single(reply)?
            } else {
                let reference = format!("{user}/{name}");
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let images: Vec<ImageView> =
                        all_from_wire(master.images().await.map_err(bus)?)?;
                    let Some(image) = images.into_iter().find(|i| i.reference == reference) else {
                        return Err(Failure {
                            code: 1,
                            message: format!("image {reference} disappeared while saving"),
                        });
                    };
                    let state = &image.state;
                    if state.starts_with("saving") {
                        eprint!("\r{reference}: {state}   ");
                        continue;
                    }
                    eprintln!();
                    if state != "ready" {
                        return Err(Failure {
                            code: 1,
                            message: format!("image {reference}: {state}"),
                        });
                    }
                    break image;
                }
            }
        }
        ImageAction::Share { image } => {
            let (owner, name) = split_pair(&image, "OWNER/NAME")?;
            from_single(
                master
                    .set_image_public(owner, name, true)
                    .await
                    .map_err(bus)?,
            )?
        }
        ImageAction::Unshare { image } => {
            let (owner, name) = split_pair(&image, "OWNER/NAME")?;
            from_single(
                master
                    .set_image_public(owner, name, false)
                    .await
                    .map_err(bus)?,
            )?
        }
        ImageAction::Delete { image } => {
            let (owner, name) = split_pair(&image, "OWNER/NAME")?;
            master.delete_image(owner, name).await.map_err(bus)?;
            println!("Image {image} deleted.");
            return Ok(());
        }
    };
    print!("{}", images_table(&[image]));
    Ok(())
}

pub(crate) async fn system_image(action: SystemImageAction) -> Result<(), Failure> {
    let conn = connect().await?;
    let master = master_proxy(&conn).await?;
    let bus = |e| failure(e, "master");
    let SystemImageAction::Update {
        name,
        from,
        no_wait,
    } = action;
    let mut image: SystemImageView = from_single(
        master
            .update_system_image(&name, &from)
            .await
            .map_err(bus)?,
    )?;
    while !no_wait && !image.settled {
        eprint!("\r{name}: {}   ", image.state);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let images: Vec<SystemImageView> =
            all_from_wire(master.system_images().await.map_err(bus)?)?;
        image = images
            .into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| Failure {
                code: 1,
                message: format!("system image {name} disappeared (are its hosts down?)"),
            })?;
        if image.settled {
            eprintln!();
        }
    }
    print!("{}", system_images_table(std::slice::from_ref(&image)));
    let state = &image.state;
    if state.contains("failed") {
        return Err(Failure {
            code: 1,
            message: format!("system image {name}: {state}"),
        });
    }
    Ok(())
}
