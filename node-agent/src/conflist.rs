//! The node's conflist: a template (default: the shape of conf/10-bridge.conflist) with
//! the node's pod CIDRs, a default route per family, the MTU and `ipMasq: false` filled
//! in, written atomically and only when its content changes.
//!
//! The agent never deletes the conflist or its directory: a node without one goes
//! NotReady, and containerd does not always notice a re-created directory
//! (containerd#11209).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

/// The built-in template: our bridge as the pods' gateway with host-local IPAM and
/// portmap chained. `ipMasq` is off because the agent masquerades for the whole node
/// (the bridge's own ipMasq would also NAT pod traffic to other nodes);
/// `forceAddress` lets the bridge take the new gateway address when the node's pod
/// CIDR changes (kube-router#689).
pub const DEFAULT_TEMPLATE: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "cbr0",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "forceAddress": true,
      "ipam": {
        "type": "host-local",
        "ranges": [],
        "routes": []
      }
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    }
  ]
}"#;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("read conflist template {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("conflist template {what}: {msg}")]
    Invalid { what: String, msg: String },
}

/// A parsed, checked template.
#[derive(Debug, Clone)]
pub struct Template {
    value: Value,
    /// Index in `plugins` of the plugin whose `ipam` is host-local.
    ipam_plugin: usize,
}

impl Template {
    pub fn builtin() -> Template {
        Template::parse(DEFAULT_TEMPLATE, "(built in)").expect("the built-in template is valid")
    }

    pub fn load(path: Option<&Path>) -> Result<Template, TemplateError> {
        let Some(path) = path else {
            return Ok(Template::builtin());
        };
        let text = fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_owned(),
            source,
        })?;
        Template::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, what: &str) -> Result<Template, TemplateError> {
        let invalid = |msg: String| TemplateError::Invalid {
            what: what.to_owned(),
            msg,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("is not JSON: {e}")))?;
        if !value["name"].is_string() || !value["cniVersion"].is_string() {
            return Err(invalid(
                "needs \"name\" and \"cniVersion\" (a conflist, not a single .conf)".into(),
            ));
        }
        let plugins = value["plugins"]
            .as_array()
            .ok_or_else(|| invalid("has no \"plugins\" list".into()))?;
        let ipam_plugin = plugins
            .iter()
            .position(|p| p["ipam"]["type"] == "host-local")
            .ok_or_else(|| {
                invalid("has no plugin with \"ipam\": {\"type\": \"host-local\"} to fill in".into())
            })?;
        Ok(Template { value, ipam_plugin })
    }

    /// The conflist for a node with these pod CIDRs (in the Node's order: the first is
    /// the pods' primary family) and pod MTU.
    pub fn render(&self, pod_cidrs: &[IpNetwork], mtu: Option<u32>) -> String {
        let mut v = self.value.clone();
        let plugin = &mut v["plugins"][self.ipam_plugin];
        let ipam = &mut plugin["ipam"];
        ipam["ranges"] = pod_cidrs
            .iter()
            .map(|c| json!([{ "subnet": c.to_string() }]))
            .collect();
        // The template's own routes stay, except default routes: one per family in use.
        let mut routes: Vec<Value> = ipam["routes"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|r| !matches!(r["dst"].as_str(), Some("0.0.0.0/0" | "::/0")))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for (v6, dst) in [(false, "0.0.0.0/0"), (true, "::/0")] {
            if pod_cidrs.iter().any(|c| c.is_ipv6() == v6) {
                routes.push(json!({ "dst": dst }));
            }
        }
        // Primary family's default route first, as the ranges are.
        if pod_cidrs.first().is_some_and(IpNetwork::is_ipv6) {
            routes.sort_by_key(|r| r["dst"] != "::/0");
        }
        ipam["routes"] = Value::Array(routes);
        if plugin["type"] == "bridge" {
            plugin["ipMasq"] = Value::Bool(false);
        }
        if let Some(mtu) = mtu {
            plugin["mtu"] = json!(mtu);
        }
        let mut text = serde_json::to_string_pretty(&v).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Writes `content` to `dir/name` unless the file already holds exactly that; returns
/// whether it wrote. Atomic: a temporary name CNI does not load (leading dot, `.tmp`
/// suffix), fsync, rename over the target, fsync the directory. A runtime reading the
/// directory at any moment sees the old file or the new one, never a partial one.
pub fn write_if_changed(dir: &Path, name: &str, content: &str) -> io::Result<bool> {
    let target = dir.join(name);
    match fs::read(&target) {
        Ok(old) if old == content.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        // The mode regardless of the umask: runtimes read it as another user at times.
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn renders_the_nodes_ranges_routes_and_mtu() {
        let t = Template::builtin();
        let text = t.render(&nets(&["10.244.3.0/24"]), Some(1450));
        let v: Value = serde_json::from_str(&text).unwrap();
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["mtu"], 1450);
        assert_eq!(
            bridge["ipam"]["ranges"],
            json!([[{"subnet": "10.244.3.0/24"}]])
        );
        assert_eq!(bridge["ipam"]["routes"], json!([{"dst": "0.0.0.0/0"}]));
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn dual_stack_keeps_the_nodes_order() {
        let t = Template::builtin();
        let v: Value =
            serde_json::from_str(&t.render(&nets(&["fd00:10:244:3::/64", "10.244.3.0/24"]), None))
                .unwrap();
        let ipam = &v["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"][0][0]["subnet"], "fd00:10:244:3::/64");
        assert_eq!(ipam["ranges"][1][0]["subnet"], "10.244.3.0/24");
        assert_eq!(
            ipam["routes"],
            json!([{"dst": "::/0"}, {"dst": "0.0.0.0/0"}])
        );
        assert!(v["plugins"][0].get("mtu").is_none());
    }

    #[test]
    fn a_custom_template_keeps_its_own_keys() {
        let t = Template::parse(
            r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[
                {"type":"bridge","bridge":"br9","ipMasq":true,"mtu":9000,
                 "ipam":{"type":"host-local","dataDir":"/x","ranges":[[{"subnet":"1.2.3.0/24"}]],
                         "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.0.2.0/24","gw":"10.1.0.1"}]}},
                {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            "t",
        )
        .unwrap();
        let v: Value = serde_json::from_str(&t.render(&nets(&["10.1.0.0/24"]), None)).unwrap();
        let b = &v["plugins"][0];
        assert_eq!(b["bridge"], "br9");
        assert_eq!(b["ipMasq"], false);
        assert_eq!(b["mtu"], 9000, "no detected MTU: the template's stays");
        assert_eq!(b["ipam"]["dataDir"], "/x");
        assert_eq!(
            b["ipam"]["routes"],
            json!([{"dst": "192.0.2.0/24", "gw": "10.1.0.1"}, {"dst": "0.0.0.0/0"}])
        );
    }

    #[test]
    fn templates_without_host_local_are_refused() {
        for bad in [
            "nope",
            r#"{"cniVersion":"1.0.0","type":"bridge"}"#,
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
        ] {
            let e = Template::parse(bad, "t").unwrap_err().to_string();
            assert!(e.starts_with("conflist template t"), "{e}");
        }
    }

    #[test]
    fn writes_atomically_and_only_on_change() {
        let dir = std::env::temp_dir().join(format!("cnit-agent-conflist-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let sub = dir.join("net.d");
        assert!(write_if_changed(&sub, "10-x.conflist", "a\n").unwrap());
        let target = sub.join("10-x.conflist");
        let before = fs::metadata(&target).unwrap();
        assert!(!write_if_changed(&sub, "10-x.conflist", "a\n").unwrap());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(&target).unwrap().ino(),
            before.ino(),
            "untouched"
        );
        assert!(write_if_changed(&sub, "10-x.conflist", "b\n").unwrap());
        assert_eq!(fs::read_to_string(&target).unwrap(), "b\n");
        assert_eq!(before.mode() & 0o777, 0o644);
        let names: Vec<_> = fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["10-x.conflist"], "no temporary file left");
        fs::remove_dir_all(&dir).unwrap();
    }
}
