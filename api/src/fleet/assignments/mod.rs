//! `Fluxplane.Fleet/policyAssignments`: a Flux configuration, rendered from a template, that every cluster the
//! assignment selects gets and keeps. The store applies an assignment in the same transaction as every change to
//! it, to its cluster group or to a cluster's tags (`store::fleet`); `routes` serves it.

pub mod model;
pub mod routes;

use crate::store::PolicyAssignmentRecord;

impl PolicyAssignmentRecord {
    /// The assignment's ARM id, as configurations it manages name it.
    pub fn arm_id(&self) -> String {
        let scope = match &self.resource_group {
            None => format!("/subscriptions/{}", self.subscription),
            Some(group) => format!("/subscriptions/{}/resourceGroups/{group}", self.subscription),
        };
        format!("{scope}/providers/{}/policyAssignments/{}", super::PROVIDER, self.name)
    }
}
