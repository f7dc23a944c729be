//! What Azure Resource Manager itself answers, rather than a resource provider behind it: the subscriptions a
//! caller may use, the registration of the providers fluxplane serves and their operations, and the cloud's
//! metadata. Azure's tools read these before they touch a resource (`az login` lists subscriptions, every
//! `az k8s-configuration` command reads its provider's registration, `az cloud register` reads the metadata), so
//! they answer as ARM does; there is nothing to configure or store in them.

pub mod metadata;
pub mod providers;
pub mod subscriptions;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// The routes that need a signed-in caller.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(subscriptions::router())
        .merge(providers::router())
}

/// The routes anyone may read: the cloud's metadata, which a client reads before it can sign in.
pub fn public_router() -> OpenApiRouter<AppState> {
    metadata::router()
}
