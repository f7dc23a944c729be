//! Builds the store again when a migration is added or changed: `sqlx::migrate!` embeds the migrations in the
//! binary, and cargo does not otherwise look at their folders.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
