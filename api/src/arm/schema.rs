//! OpenAPI schema helpers for ARM resources.

use utoipa::openapi::{RefOr, Schema};

/// The schema of `T` without `additionalProperties: false`, for an answer that flattens `T` next to read-only
/// properties of its own (`#[schema(schema_with = open_schema::<T>)]` on the `#[serde(flatten)]` field): `T`'s
/// `deny_unknown_fields` refuses unknown fields in requests, but as an `allOf` item of the answer it would refuse
/// the answer's own properties.
pub fn open_schema<T: utoipa::PartialSchema>() -> RefOr<Schema> {
    let mut schema = T::schema();
    if let RefOr::T(Schema::Object(object)) = &mut schema {
        object.additional_properties = None;
    }
    schema
}
