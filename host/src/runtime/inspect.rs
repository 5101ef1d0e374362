//! Reading a component before compiling it: is it a component at all, which world does it
//! export, and which plugin API version was it built against.

use wasmparser::{Parser, Payload};

/// Plugin API versions this hub loads. Older minors stay here when newer ones ship; their
/// frozen WIT lives beside the current one and is converted to the newest types.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The newest plugin API version, the one `plugin-sdk/wit` defines and the hub's types follow.
pub const CURRENT_API_VERSION: &str = "1.1.0";

/// The custom section the SDK stamps the API version into.
pub const API_VERSION_SECTION: &str = "switchyard:api-version";

/// Which world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Destination,
    Source,
    /// Since plugin API 1.1.0.
    Transform,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::Destination => "destination",
            World::Source => "source",
            World::Transform => "transform",
        })
    }
}

/// What the bytes say about a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    pub world: World,
    pub api_version: String,
    /// The version the SDK stamped, when built with switchyard-sdk.
    pub sdk_stamp: Option<String>,
}

/// Checks that `bytes` are a Switchyard plugin component of a supported API version. Each error
/// is one line saying what is wrong and what to do.
pub fn inspect(bytes: &[u8]) -> Result<ComponentInfo, String> {
    if Parser::is_core_wasm(bytes) {
        return Err("this is a core WebAssembly module, not a component: build the plugin with `switchyard plugin build` (target wasm32-wasip2)".into());
    }
    if !Parser::is_component(bytes) {
        return Err("this is not a WebAssembly component (bad magic number or version)".into());
    }
    let mut depth = 0usize;
    let mut exports: Vec<String> = Vec::new();
    let mut stamp = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("the component is malformed: {e}"))?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(|e| format!("the component is malformed: {e}"))?;
                    exports.push(export.name.name.to_string());
                }
            }
            Payload::CustomSection(section) if section.name() == API_VERSION_SECTION => {
                stamp = Some(String::from_utf8_lossy(section.data()).trim().to_string());
            }
            _ => {}
        }
    }

    let mut world = None;
    let mut version = None;
    for name in &exports {
        let Some(rest) = name.strip_prefix("switchyard:plugin/") else {
            continue;
        };
        let Some((iface, ver)) = rest.split_once('@') else {
            return Err(format!("export `{name}` carries no API version"));
        };
        match iface {
            "delivery" => world = Some(World::Destination),
            "intake" => world = Some(World::Source),
            "transformation" => world = Some(World::Transform),
            _ => {}
        }
        if let Some(prev) = &version {
            if prev != ver {
                return Err(format!("exports mix plugin API versions {prev} and {ver}"));
            }
        }
        version = Some(ver.to_string());
    }
    let Some(version) = version else {
        return Err("this component is not a Switchyard plugin: it exports nothing from `switchyard:plugin`".into());
    };
    if !SUPPORTED_API_VERSIONS.contains(&version.as_str()) {
        let newest = SUPPORTED_API_VERSIONS.last().copied().unwrap_or("?");
        let newer = match (
            semver::Version::parse(&version),
            semver::Version::parse(newest),
        ) {
            (Ok(v), Ok(n)) => v > n,
            _ => false,
        };
        return Err(if newer {
            format!("plugin API version {version} is newer than this hub supports (up to {newest}): upgrade Switchyard, or build the plugin against switchyard-sdk for API {newest}")
        } else {
            format!(
                "unknown plugin API version {version}: this hub loads {}",
                SUPPORTED_API_VERSIONS.join(", ")
            )
        });
    }
    let Some(world) = world else {
        return Err(format!("the component exports switchyard:plugin@{version} but none of `delivery` (destination), `intake` (source) and `transformation` (transform)"));
    };
    if !exports
        .iter()
        .any(|e| e == &format!("switchyard:plugin/plugin@{version}"))
    {
        return Err(format!("the component does not export `switchyard:plugin/plugin@{version}` (manifest and check)"));
    }
    Ok(ComponentInfo {
        world,
        api_version: version,
        sdk_stamp: stamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_version_is_supported_and_last() {
        assert_eq!(SUPPORTED_API_VERSIONS.last(), Some(&CURRENT_API_VERSION));
        assert!(SUPPORTED_API_VERSIONS.contains(&super::super::v1_0::API_VERSION));
    }

    #[test]
    fn refuses_what_is_not_a_component() {
        assert!(inspect(b"hello")
            .unwrap_err()
            .contains("not a WebAssembly component"));
        let core = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        assert!(inspect(&core)
            .unwrap_err()
            .contains("core WebAssembly module"));
    }
}
