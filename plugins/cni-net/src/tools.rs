//! The external firewall tools: finding them (once per process), running them, and
//! telling iptables-nft from iptables-legacy. Used by the NAT layouts and by bridge's
//! `macspoofchk`, so there is one runner and one nft quoting rule.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::Family;
use crate::nat::error::NatError;

/// Used when the runtime gave us no `PATH` (CNI does not require one).
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    IptablesSave,
    IptablesRestore,
    Ip6tablesSave,
    Ip6tablesRestore,
    Nft,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::IptablesSave => "iptables-save",
            Tool::IptablesRestore => "iptables-restore",
            Tool::Ip6tablesSave => "ip6tables-save",
            Tool::Ip6tablesRestore => "ip6tables-restore",
            Tool::Nft => "nft",
        }
    }

    fn slot(self) -> &'static OnceLock<Option<PathBuf>> {
        static SLOTS: [OnceLock<Option<PathBuf>>; 5] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        &SLOTS[self as usize]
    }

    /// Absolute path of the tool, looked up once per process: availability checks must
    /// not cost a fork on every plugin call.
    pub fn path(self) -> Option<&'static Path> {
        self.slot()
            .get_or_init(|| {
                let path = std::env::var_os("PATH")
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| FALLBACK_PATH.into());
                find_in_path(self.name(), &path)
            })
            .as_deref()
    }

    pub fn available(self) -> bool {
        self.path().is_some()
    }
}

fn find_in_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Runs `tool args...`, feeding `input` on stdin, and returns its stdout.
pub fn run(tool: Tool, args: &[&str], input: Option<&str>) -> Result<String, NatError> {
    let path = tool.path().ok_or(NatError::ToolMissing(tool.name()))?;
    let mut cmd = Command::new(path);
    cni_types::invoke::die_with_parent(&mut cmd);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_err = |source| NatError::Spawn {
        tool: tool.name().to_string(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A tool that dies early closes the pipe; its exit status tells the real story.
        let _ = stdin.write_all(text.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_err)?;
    if output.status.success() {
        return String::from_utf8(output.stdout).map_err(|e| NatError::Parse {
            tool: tool.name().to_string(),
            detail: e.to_string(),
        });
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let mut detail = if stderr.is_empty() {
        "no error output".to_string()
    } else {
        stderr
    };
    if let Some(line) = input.and_then(|text| failed_line(&detail, text)) {
        detail.push_str(&format!(" [input line: {line}]"));
    }
    Err(NatError::ToolFailed {
        tool: tool.name().to_string(),
        status: output.status.to_string(),
        detail,
    })
}

/// An nft string literal. nft has no escape for `"` inside strings: the reference strips
/// them from comment parts, and IDs and names never contain them.
pub fn nft_quote(text: &str) -> String {
    format!("\"{}\"", text.replace('"', ""))
}

/// iptables-restore only reports "line N failed"; quote that line so the error is useful.
fn failed_line<'a>(stderr: &str, input: &'a str) -> Option<&'a str> {
    let lower = stderr.to_ascii_lowercase();
    let at = lower.find("line")?;
    let digits: String = lower[at + 4..]
        .trim_start_matches([' ', ':'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let n: usize = digits.parse().ok()?;
    input.lines().nth(n.checked_sub(1)?)
}

/// Whether this family's iptables tools are the nf_tables flavour (whose rules we can
/// see through netlink); iptables-legacy keeps them where only its own tools look.
pub fn iptables_is_nft(family: Family) -> bool {
    let tools = match family {
        Family::V4 => [Tool::IptablesSave, Tool::IptablesRestore],
        Family::V6 => [Tool::Ip6tablesSave, Tool::Ip6tablesRestore],
    };
    tools.iter().all(|tool| {
        tool.path()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .is_some_and(|real| is_nft_multi(&real))
    })
}

fn is_nft_multi(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("xtables-nft"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_line_quotes_the_rejected_input() {
        let input = "*nat\n:X - [0:0]\n-A X -j BOGUS\nCOMMIT\n";
        assert_eq!(
            failed_line("iptables-restore: line 3 failed", input),
            Some("-A X -j BOGUS")
        );
        assert_eq!(
            failed_line("Error occurred at line: 2", input),
            Some(":X - [0:0]")
        );
        assert_eq!(failed_line("something else", input), None);
    }

    #[test]
    fn finds_tools_only_as_executables_in_path() {
        let dir = std::env::temp_dir().join(format!("cni-nat-path-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("fake-tool");
        fs::write(&exe, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([Path::new("relative"), &dir]).unwrap();
        assert_eq!(find_in_path("fake-tool", &path), None);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in_path("fake-tool", &path), Some(exe.clone()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nft_strings_cannot_be_broken_out_of() {
        assert_eq!(nft_quote("c1-eth0"), "\"c1-eth0\"");
        assert_eq!(
            nft_quote("a\"; flush ruleset; \""),
            "\"a; flush ruleset; \""
        );
    }

    #[test]
    fn recognises_the_nft_multicall_binary() {
        assert!(is_nft_multi(Path::new("/usr/sbin/xtables-nft-multi")));
        assert!(!is_nft_multi(Path::new("/usr/sbin/xtables-legacy-multi")));
        assert!(!is_nft_multi(Path::new("/usr/sbin/iptables")));
    }
}
