//! Writes `deploy/schema/weir.schema.json` and `docs/configuration.md` from the schema source
//! (config/src/schema/weir.schema.yaml). Run from anywhere: `cargo run -p weir-config --example schema`.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let files = [
        (
            "deploy/schema/weir.schema.json",
            weir_config::schema::json_schema_text()?,
        ),
        ("docs/configuration.md", weir_config::schema::markdown()?),
    ];
    for (path, text) in files {
        let path = repo.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
