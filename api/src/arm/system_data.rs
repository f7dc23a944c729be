//! ARM `systemData`: who created and last modified a resource, and when.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemData {
    pub created_by: String,
    pub created_by_type: String,
    pub created_at: DateTime<Utc>,
    pub last_modified_by: String,
    pub last_modified_by_type: String,
    pub last_modified_at: DateTime<Utc>,
}

impl SystemData {
    pub fn created(by: &str, at: DateTime<Utc>) -> Self {
        Self {
            created_by: by.to_owned(),
            created_by_type: "User".to_owned(),
            created_at: at,
            last_modified_by: by.to_owned(),
            last_modified_by_type: "User".to_owned(),
            last_modified_at: at,
        }
    }

    pub fn modified(&self, by: &str, at: DateTime<Utc>) -> Self {
        Self {
            last_modified_by: by.to_owned(),
            last_modified_by_type: "User".to_owned(),
            last_modified_at: at,
            ..self.clone()
        }
    }
}
