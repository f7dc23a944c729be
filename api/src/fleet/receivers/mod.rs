//! `Fluxplane.Fleet/gitReceivers`: a webhook a Git host calls on push. A receiver names a repository and its host
//! (`model`), holds a secret sealed by the server's vault (`service`), and is written and read like every fleet
//! resource (`routes`); its public webhook (`hook`) authenticates each delivery with that secret and asks the
//! configurations of the receiver's scope that read the pushed ref to re-check their source at once.

pub mod hook;
pub mod limits;
pub mod model;
pub mod routes;
pub mod service;
