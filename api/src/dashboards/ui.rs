//! The web UI: three files embedded in the binary (nothing is loaded from elsewhere), served at `/`, `/ui/app.js`
//! and `/ui/app.css`. It signs in with a token like any API client; `fluxplane dev` fills the sign-in in.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// The page may talk to this server only, and run only its own script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                                       img-src 'self' data:; connect-src 'self'; form-action 'none'; \
                                       frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn index(State(state): State<AppState>) -> Response {
    let (token, subscription) = match &state.config.ui_sign_in {
        Some(sign_in) => (escape(&sign_in.token), escape(&sign_in.subscription)),
        None => (String::new(), String::new()),
    };
    let page = INDEX
        .replace(
            r#"<meta name="fluxplane-dev-token" content="">"#,
            &format!(r#"<meta name="fluxplane-dev-token" content="{token}">"#),
        )
        .replace(
            r#"<meta name="fluxplane-dev-subscription" content="">"#,
            &format!(r#"<meta name="fluxplane-dev-subscription" content="{subscription}">"#),
        );
    let mut response = Html(page).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // the page may carry a token (in dev): never cached, never sent on as a referrer
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Escapes text for an HTML attribute value.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_the_sign_in_placeholders_it_fills() {
        assert!(INDEX.contains(r#"<meta name="fluxplane-dev-token" content="">"#));
        assert!(INDEX.contains(r#"<meta name="fluxplane-dev-subscription" content="">"#));
        assert!(INDEX.contains("/ui/app.js") && INDEX.contains("/ui/app.css"));
    }

    #[test]
    fn attribute_values_are_escaped() {
        assert_eq!(escape(r#"a"><script>&"#), "a&quot;&gt;&lt;script&gt;&amp;");
    }
}
