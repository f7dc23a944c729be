//! The state every handler shares.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::cipher::SecretCipher;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServeConfig>,
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    pub cipher: Arc<SecretCipher>,
    pub metrics: Arc<Metrics>,
}
