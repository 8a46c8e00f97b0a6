//! The job world, as checked at load: why a module is refused ([`LoadError`]), what can be
//! checked before compiling (the header and the names of imports and exports) and what needs
//! the compiled component (the linker's imports, `run`'s type). Used by the loader in this process
//! and by the compiler child alike.

use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::bindings;
use super::host::RunState;
use crate::modules::{FormatError, check_component_header};

/// Why a module was refused at load.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a WebAssembly component at all.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A component that wasmtime could not parse, validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// A valid component that does not fit the `wasmq:job/job` world.
    #[error("component does not fit the `wasmq:job/job` world: {0}")]
    World(String),
    /// Compiling took longer than the operator allows.
    #[error(
        "compiling the component took longer than the limit of {} s (--compile-timeout)",
        limit.as_secs_f64()
    )]
    TimeBudget {
        /// The limit.
        limit: Duration,
    },
    /// Compiling needed more memory than the operator allows.
    #[error(
        "compiling the component needed more than the limit of {} MiB of memory (--compile-memory-mb)",
        limit_bytes >> 20
    )]
    MemoryBudget {
        /// The limit.
        limit_bytes: u64,
    },
    /// The compiler process could not be run: nothing is known about the component.
    #[error("{0}")]
    Compiler(String),
}

impl LoadError {
    /// Whether loading the same bytes again would fail the same way. A compile that ran out of
    /// time may fit on a less busy machine, and a compiler that could not start says nothing
    /// about the component.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, LoadError::TimeBudget { .. } | LoadError::Compiler(_))
    }
}

/// What can be checked without compiling: the header, then the names of the component's own
/// imports and exports, read with `wasmparser` (nested modules and components are skipped), and
/// the operator's refused interfaces.
pub(super) fn check_before_compiling(bytes: &[u8], refused: &[String]) -> Result<(), LoadError> {
    check_component_header(bytes)?;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut depth = 0usize;
    let invalid = |e: wasmparser::BinaryReaderError| LoadError::Invalid(e.to_string());
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    let import = import.map_err(invalid)?;
                    // A world's `use` of a type is imported as a type: nothing to link.
                    if !matches!(import.ty, wasmparser::ComponentTypeRef::Type(_)) {
                        imports.push(import.name.name);
                    }
                }
            }
            wasmparser::Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    exports.push(export.map_err(invalid)?.name.name);
                }
            }
            _ => {}
        }
    }
    check_import_names(&imports)?;
    for name in &imports {
        if let Some(interface) = refused.iter().find(|r| is_within(name, r)) {
            return Err(LoadError::World(format!(
                "imports `{name}`, which this host's operator refuses (--refuse-imports {interface})"
            )));
        }
    }
    check_export_names(&exports)
}

/// Whether import `name` (`wasi:sockets/tcp@0.2.6`) is within `prefix` (`wasi:sockets`,
/// `wasi:sockets/tcp`).
fn is_within(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '@']))
}

/// Checks a compiled component's imports, exports and `run`'s type against the job world (the
/// linker's imports included); returns it ready to instantiate.
pub(super) fn check_world(
    engine: &Engine,
    linker: &wasmtime::component::Linker<RunState>,
    component: &Component,
) -> Result<bindings::JobPre<RunState>, LoadError> {
    let ty = component.component_type();
    // Imports first (ours, then what the linker grants), exports next, types last: each
    // error names the first item that does not fit.
    let imports: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
    check_import_names(&imports)?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| LoadError::World(format!("{e:#}")))?;
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    check_export_names(&exports)?;
    bindings::JobPre::new(pre).map_err(|e| LoadError::World(format!("export `run`: {e:#}")))
}

/// Refuses imports outside WASI and the `wasmq:job` package, naming the first one. (The linker
/// then refuses WASI interfaces the sandbox does not grant.)
fn check_import_names(imports: &[&str]) -> Result<(), LoadError> {
    for name in imports {
        if !(name.starts_with("wasi:") || name.starts_with("wasmq:job/")) {
            return Err(LoadError::World(format!(
                "imports `{name}`, which the host does not provide"
            )));
        }
    }
    Ok(())
}

/// Requires the `run` export, naming what the component exports instead when it is missing.
/// (`JobPre::new` then checks its type.) Other exports are allowed and never called: guest
/// toolchains add their own (componentize-py exports `exports`, the hook its build-time
/// pre-initialisation calls).
fn check_export_names(exports: &[&str]) -> Result<(), LoadError> {
    if !exports.contains(&"run") {
        return Err(LoadError::World(
            if let Some(cmd) = exports.iter().find(|e| e.starts_with("wasi:cli/run")) {
                format!(
                    "missing export `run`; it exports `{cmd}`, so it is a command (a `main`), not a \
                     job: build a `cdylib` whose job function carries `#[wasmq_guest::job]`"
                )
            } else {
                format!(
                    "missing export `run` (it exports: {})",
                    list_or_none(exports)
                )
            },
        ));
    }
    Ok(())
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
