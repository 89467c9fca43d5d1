//! The committed OpenAPI document must match the code. Regenerate with
//! `ANNEAL_UPDATE_OPENAPI=1 cargo test -p anneal-server --test openapi`.

#[test]
fn committed_openapi_document_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let generated = anneal_server::api::openapi_json();
    if std::env::var_os("ANNEAL_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is out of date: run ANNEAL_UPDATE_OPENAPI=1 cargo test -p anneal-server --test openapi"
    );
}
