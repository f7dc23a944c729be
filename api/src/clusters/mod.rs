//! Connected clusters: registration, tags and the read-only state agents report.

pub mod model;
pub mod routes;
pub mod service;
pub mod view;
