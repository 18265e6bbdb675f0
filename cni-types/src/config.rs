//! Network configuration: the plugin conf every plugin receives on stdin and
//! the conflist a runtime reads from disk.
//!
//! Only the keys the spec defines are typed here. Plugin-specific keys are
//! read by each plugin from the raw bytes (`Request::parse_conf`), so unknown
//! keys always reach the plugin that owns them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::result::Dns;

/// The keys every plugin conf shares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub capabilities: Map<String, Value>,
    /// Kept raw: the IPAM plugin owns its keys. `{}` means "no IPAM".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(
        rename = "runtimeConfig",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub runtime_config: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub args: Map<String, Value>,
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    /// GC's list of attachments to keep; read it with [`NetConf::gc_attachments`].
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The same list under the name early 1.1 text gave it. libcni 1.2 sends
    /// both keys, so the two are separate fields (one field with an alias
    /// would refuse the pair as a duplicate).
    #[serde(
        rename = "cni.dev/attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// GC's list of attachments to keep, under either of its names (the
    /// spec's wins); `None` when the runtime sent no list.
    pub fn gc_attachments(&self) -> Option<&[Attachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.legacy_attachments.as_deref())
    }

    /// The IPAM plugin's type, or `None` for L2-only configs (`"ipam": {}`).
    pub fn ipam_type(&self) -> Option<&str> {
        crate::json::get(self.ipam.as_ref()?, "type")?
            .as_str()
            .filter(|t| !t.is_empty())
    }
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// A conflist as runtimes read it from `/etc/cni/net.d/*.conflist`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetConfList {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(rename = "cniVersions", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "disableCheck", default)]
    pub disable_check: bool,
    #[serde(rename = "disableGC", default)]
    pub disable_gc: bool,
    #[serde(rename = "loadOnlyInlinedPlugins", default)]
    pub load_only_inlined_plugins: bool,
    /// Each plugin object kept whole: runtimes must pass unknown keys through.
    #[serde(default)]
    pub plugins: Vec<Map<String, Value>>,
}

impl NetConfList {
    /// The request a runtime sends to plugin `index` of the list: the plugin
    /// object plus `name`, `cniVersion` and, when chained, `prevResult`.
    pub fn plugin_request(&self, index: usize, prev_result: Option<&Value>) -> Option<Value> {
        let mut conf = self.plugins.get(index)?.clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        Some(Value::Object(conf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plugin_conf_common_keys() {
        let conf: NetConf = serde_json::from_value(json!({
            "cniVersion": "1.1.0", "name": "net", "type": "bridge",
            "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.1.2.0/24"},
            "runtimeConfig": {"portMappings": []},
            "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(conf.plugin_type, "bridge");
        assert_eq!(conf.ipam_type(), Some("host-local"));
        assert_eq!(conf.gc_attachments().unwrap()[0].container_id, "a");
    }

    #[test]
    fn gc_list_under_both_names_as_libcni_sends_it() {
        let conf: NetConf = crate::json::from_value(json!({
            "cniVersion": "1.1.0", "name": "net",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(conf.gc_attachments().unwrap()[0].container_id, "a");
    }

    #[test]
    fn every_key_matches_in_any_case_like_go() {
        let attachment = json!([{"containerID": "a", "ifname": "eth0"}]);
        crate::json::check_key_spellings::<NetConf>(&json!({
            "cniVersion": "1.1.0", "name": "net", "type": "bridge",
            "capabilities": {"portMappings": true},
            "ipam": {"type": "host-local"},
            "dns": {"nameservers": ["10.0.0.53"], "domain": "cluster.local",
                    "search": ["svc"], "options": ["ndots:5"]},
            "runtimeConfig": {"portMappings": []}, "args": {"cni": {}},
            "prevResult": {"cniVersion": "1.0.0"},
            "cni.dev/valid-attachments": attachment, "cni.dev/attachments": attachment
        }))
        .unwrap();
        crate::json::check_key_spellings::<NetConfList>(&json!({
            "cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0"], "name": "cbr0",
            "disableCheck": true, "disableGC": true, "loadOnlyInlinedPlugins": true,
            "plugins": [{"type": "bridge"}]
        }))
        .unwrap();
    }

    #[test]
    fn ipam_type_matches_in_any_case() {
        let conf: NetConf =
            crate::json::from_value(json!({"name": "n", "IPAM": {"Type": "host-local"}})).unwrap();
        assert_eq!(conf.ipam_type(), Some("host-local"));
    }

    #[test]
    fn empty_ipam_means_l2_only() {
        let conf: NetConf = serde_json::from_value(json!({"name": "n", "ipam": {}})).unwrap();
        assert_eq!(conf.ipam_type(), None);
        let conf: NetConf =
            serde_json::from_value(json!({"name": "n", "ipam": {"type": ""}})).unwrap();
        assert_eq!(conf.ipam_type(), None);
    }

    #[test]
    fn conflist_builds_chained_requests() {
        let list: NetConfList = serde_json::from_value(json!({
            "cniVersion": "1.0.0", "name": "cbr0",
            "plugins": [{"type": "bridge", "custom": 1}, {"type": "portmap", "capabilities": {"portMappings": true}}]
        }))
        .unwrap();
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let req = list.plugin_request(1, Some(&prev)).unwrap();
        assert_eq!(req["name"], "cbr0");
        assert_eq!(req["prevResult"], prev);
        assert_eq!(list.plugin_request(0, None).unwrap()["custom"], 1);
        assert!(list.plugin_request(2, None).is_none());
    }
}
