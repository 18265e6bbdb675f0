//! `resolvConf`: the nameserver/domain/search/options lines of a resolv.conf-style file,
//! returned as the result's `dns`.

use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// Reads and parses the file; the error text is Go's (`open <path>: <reason>`).
pub fn read(path: &Path) -> Result<ResolvConf, String> {
    // A resolv.conf is a few hundred bytes; refuse to slurp something absurd by mistake.
    const LIMIT: u64 = 1 << 20;
    let file = std::fs::File::open(path).map_err(|e| crate::ledger::go_err("open", path, &e))?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, LIMIT), &mut text)
        .map_err(|e| crate::ledger::go_err("read", path, &e))?;
    Ok(parse(&String::from_utf8_lossy(&text)))
}

/// Comment lines start with `#` or `;`; a keyword without a value is skipped; the last
/// `domain` wins; `search` and `options` accumulate.
pub fn parse(text: &str) -> ResolvConf {
    let mut out = ResolvConf::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), Some(first)) = (fields.next(), fields.next()) else {
            continue;
        };
        match key {
            "nameserver" => out.nameservers.push(first.to_string()),
            "domain" => out.domain = Some(first.to_string()),
            "search" => {
                out.search.push(first.to_string());
                out.search.extend(fields.map(str::to_string));
            }
            "options" => {
                out.options.push(first.to_string());
                out.options.extend(fields.map(str::to_string));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_keys() {
        let r = parse(
            "# comment\n; other comment\nnameserver 1.1.1.1\r\nnameserver   8.8.8.8 ignored\n\
             domain a.example\ndomain b.example\nsearch x.example y.example\nsearch z\n\
             options ndots:5 timeout:2\nsortlist 1.2.3.4\nnameserver\n  \n",
        );
        assert_eq!(r.nameservers, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(r.domain.as_deref(), Some("b.example"));
        assert_eq!(r.search, ["x.example", "y.example", "z"]);
        assert_eq!(r.options, ["ndots:5", "timeout:2"]);
    }

    #[test]
    fn empty_file() {
        assert_eq!(parse(""), ResolvConf::default());
    }

    #[test]
    fn missing_file_error_is_go_style() {
        let e = read(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert_eq!(
            e,
            "open /nonexistent/resolv.conf: no such file or directory"
        );
    }
}
