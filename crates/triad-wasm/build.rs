//! Builds the components of `adapters/` (their own workspace) for `wasm32-wasip2`, so the
//! embedded default model is compiled into this crate and the tests have their testbed.
//! They go to `<target dir>/wasm-adapters`, shared by every profile of the main build.

use std::path::{Path, PathBuf};
use std::process::Command;

const COMPONENTS: &[(&str, &str)] = &[
    ("TRIAD_LOCAL_ADAPTER_WASM", "triad_local_adapter.wasm"),
    ("TRIAD_OPENAI_ADAPTER_WASM", "triad_openai_adapter.wasm"),
    ("TRIAD_TESTBED_ADAPTER_WASM", "triad_testbed_adapter.wasm"),
];

fn main() -> Result<(), String> {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = here.join("../..");
    let adapters = root.join("adapters");
    for watched in [
        "adapters/Cargo.toml",
        "adapters/Cargo.lock",
        "adapters/.cargo/config.toml",
        "adapters/local/src",
        "adapters/local/Cargo.toml",
        "adapters/openai/src",
        "adapters/openai/Cargo.toml",
        "adapters/testbed/src",
        "adapters/testbed/Cargo.toml",
        "wit",
        "crates/triad-local-model/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-adapters");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        // From adapters/, so its .cargo/config.toml (the guests' link flags) applies.
        .current_dir(&adapters)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(adapters.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags and wrappers (clippy's driver) are for the host target.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .map_err(|e| format!("running cargo for the WebAssembly adapters: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the WebAssembly adapters (adapters/) failed ({status}); they need the \
             wasm32-wasip2 target: rustup target add wasm32-wasip2"
        ));
    }
    let built = target_dir.join("wasm32-wasip2/release");
    for (var, file) in COMPONENTS {
        let path = built.join(file);
        if !Path::new(&path).is_file() {
            return Err(format!("{} was not built", path.display()));
        }
        println!("cargo:rustc-env={var}={}", path.display());
    }
    Ok(())
}
