//! Reading backend options: the JSON object a user gave (Python keywords, a `shoal.toml`
//! template, `--opt`), its keys checked against the registry and its values turned into
//! types by one rule per [`Kind`], so every backend and every caller agrees on what is valid.

use crate::error::{Result, SchedError};
use crate::registry::{self, Kind};
use serde_json::{Map, Value as Json};
use shoal_core::units::{MemSize, TimeLimit};
use shoal_core::CoreError;
use std::path::PathBuf;
use std::time::Duration;

/// An environment choice: everything, nothing, or these variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvChoice {
    All(bool),
    Names(Vec<String>),
}

/// One option's value, with its name for errors.
#[derive(Debug, Clone, Copy)]
pub struct Value<'a> {
    key: &'a str,
    v: &'a Json,
}

impl<'a> Value<'a> {
    pub fn new(key: &'a str, v: &'a Json) -> Self {
        Value { key, v }
    }

    pub fn key(&self) -> &'a str {
        self.key
    }

    pub fn raw(&self) -> &'a Json {
        self.v
    }

    pub fn invalid(&self, reason: &str) -> SchedError {
        let shown = match self.v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        SchedError::Core(CoreError::invalid(self.key, shown, reason))
    }

    /// Whether the value is of `kind` (the check templates and `--opt` run).
    pub fn check(&self, kind: Kind) -> Result<()> {
        match kind {
            Kind::Count => self.count().map(drop),
            Kind::Seconds => self.seconds().map(drop),
            Kind::Time => self.time().map(drop),
            Kind::Memory => self.memory().map(drop),
            Kind::Name => self.name().map(drop),
            Kind::Text => self.text().map(drop),
            Kind::Path => self.path().map(drop),
            Kind::Bool => self.bool().map(drop),
            Kind::Args => self.args().map(drop),
            Kind::Lines => self.lines().map(drop),
            Kind::Table => self.table().map(drop),
            Kind::Resources => crate::sge::resources(self.v).map(drop),
            Kind::Names => self.names().map(drop),
        }
    }

    /// Strings as they are, numbers as their text (`time=90`, `memory=512`).
    fn scalar(&self) -> Option<String> {
        match self.v {
            Json::String(s) => Some(s.clone()),
            Json::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    pub fn count(&self) -> Result<u32> {
        let n = match self.v {
            Json::Number(n) => n.as_u64(),
            Json::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.filter(|n| (1..=u64::from(u32::MAX)).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| self.invalid("must be a whole number >= 1"))
    }

    pub fn seconds(&self) -> Result<Duration> {
        let text = self
            .scalar()
            .ok_or_else(|| self.invalid("must be a number of seconds"))?;
        Ok(TimeLimit::parse(self.key, &text)?.0)
    }

    pub fn time(&self) -> Result<TimeLimit> {
        let text = self
            .scalar()
            .ok_or_else(|| self.invalid("must be a time limit like \"2h\" or \"1-00:00:00\""))?;
        Ok(TimeLimit::parse(self.key, &text)?)
    }

    pub fn memory(&self) -> Result<MemSize> {
        let text = self
            .scalar()
            .ok_or_else(|| self.invalid("must be a size like \"2G\" or a number of MB"))?;
        Ok(MemSize::parse(self.key, &text)?)
    }

    /// One word: no whitespace, not empty.
    pub fn name(&self) -> Result<String> {
        let s = self.scalar().unwrap_or_default();
        let s = s.trim();
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(self.invalid("must be a non-empty name without spaces"));
        }
        Ok(s.to_string())
    }

    pub fn text(&self) -> Result<String> {
        match self.scalar() {
            Some(s) if !s.trim().is_empty() && !s.contains('\n') => Ok(s.trim().to_string()),
            _ => Err(self.invalid("must be a non-empty one-line string")),
        }
    }

    pub fn path(&self) -> Result<PathBuf> {
        match self.v {
            Json::String(s) if !s.trim().is_empty() => Ok(PathBuf::from(s.trim())),
            _ => Err(self.invalid("must be a path")),
        }
    }

    pub fn bool(&self) -> Result<bool> {
        self.v
            .as_bool()
            .ok_or_else(|| self.invalid("must be true or false"))
    }

    fn string_list(&self, what: &str) -> Option<Result<Vec<String>>> {
        let Json::Array(items) = self.v else {
            return None;
        };
        Some(
            items
                .iter()
                .map(|i| match i {
                    Json::String(s) => Ok(s.clone()),
                    _ => Err(self.invalid(&format!("must be a list of {what} (strings)"))),
                })
                .collect(),
        )
    }

    /// Command-line arguments: a list, or one string split as a shell would.
    pub fn args(&self) -> Result<Vec<String>> {
        if let Some(list) = self.string_list("arguments") {
            return list;
        }
        match self.v {
            Json::String(s) => shlex::split(s).ok_or_else(|| self.invalid("unbalanced quotes")),
            _ => {
                Err(self
                    .invalid("must be a list of strings (e.g. [\"--exclusive\", \"--nice=10\"])"))
            }
        }
    }

    /// Lines: a list, or one string of lines.
    pub fn lines(&self) -> Result<Vec<String>> {
        if let Some(list) = self.string_list("lines") {
            return list;
        }
        match self.v {
            Json::String(s) => Ok(s.lines().map(str::to_string).collect()),
            _ => Err(self.invalid("must be a list of lines (strings)")),
        }
    }

    pub fn table(&self) -> Result<&'a Map<String, Json>> {
        self.v
            .as_object()
            .ok_or_else(|| self.invalid("must be a table, e.g. { NAME = \"value\" }"))
    }

    /// `true` (everything), `false` (nothing), or variable names (a list or `"A, B"`).
    pub fn names(&self) -> Result<EnvChoice> {
        let names = match self.v {
            Json::Bool(b) => return Ok(EnvChoice::All(*b)),
            Json::String(s) => s
                .split([',', ' '])
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
            Json::Array(_) => self
                .string_list("variable names")
                .unwrap_or(Ok(Vec::new()))?,
            _ => return Err(self.invalid("must be true, false or a list of variable names")),
        };
        let names: Vec<String> = names;
        if let Some(bad) = names.iter().find(|n| !valid_env_name(n, true)) {
            return Err(self.invalid(&format!("{bad:?} is not an environment variable name")));
        }
        Ok(EnvChoice::Names(names))
    }
}

/// `A_B1` (and, with patterns, `LC_*`-style globs HTCondor's getenv takes).
pub fn valid_env_name(name: &str, patterns: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (patterns && c == '*'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (patterns && c == '*'))
}

/// A backend's options: keys checked against the registry once, values read by kind.
#[derive(Debug)]
pub struct Opts {
    backend: &'static str,
    map: Map<String, Json>,
}

impl Opts {
    /// `options` must be an object (or null); a key the backend does not know is an error
    /// whose hint names the closest of that backend's options.
    pub fn new(backend: &'static str, options: &Json) -> Result<Opts> {
        let map = match options {
            Json::Object(m) => m.clone(),
            Json::Null => Map::new(),
            other => {
                return Err(SchedError::Config(format!(
                    "backend options must be a mapping, not {other}"
                )))
            }
        };
        let b = registry::backend(backend)?;
        registry::check_keys(b, map.keys(), false)?;
        Ok(Opts { backend, map })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The value of `key`; null means not given (so callers can pass `partition=None`).
    pub fn get<'a>(&'a self, key: &'a str) -> Option<Value<'a>> {
        self.map
            .get(key)
            .filter(|v| !v.is_null())
            .map(|v| Value::new(key, v))
    }

    pub fn count(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|v| v.count()).transpose()
    }
    pub fn seconds(&self, key: &str) -> Result<Option<Duration>> {
        self.get(key).map(|v| v.seconds()).transpose()
    }
    pub fn time(&self, key: &str) -> Result<Option<TimeLimit>> {
        self.get(key).map(|v| v.time()).transpose()
    }
    pub fn memory(&self, key: &str) -> Result<Option<MemSize>> {
        self.get(key).map(|v| v.memory()).transpose()
    }
    pub fn name(&self, key: &str) -> Result<Option<String>> {
        self.get(key).map(|v| v.name()).transpose()
    }
    pub fn text(&self, key: &str) -> Result<Option<String>> {
        self.get(key).map(|v| v.text()).transpose()
    }
    pub fn path(&self, key: &str) -> Result<Option<PathBuf>> {
        self.get(key).map(|v| v.path()).transpose()
    }
    pub fn args(&self, key: &str) -> Result<Vec<String>> {
        Ok(self
            .get(key)
            .map(|v| v.args())
            .transpose()?
            .unwrap_or_default())
    }
    pub fn lines(&self, key: &str) -> Result<Vec<String>> {
        Ok(self
            .get(key)
            .map(|v| v.lines())
            .transpose()?
            .unwrap_or_default())
    }
    pub fn names(&self, key: &str) -> Result<Option<EnvChoice>> {
        self.get(key).map(|v| v.names()).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_accept_what_users_write_and_quote_the_rest() {
        let ok = |kind, v: Json| Value::new("k", &v).check(kind).is_ok();
        assert!(ok(Kind::Count, json!(2)) && ok(Kind::Count, json!("3")));
        assert!(!ok(Kind::Count, json!(0)) && !ok(Kind::Count, json!(1.5)));
        assert!(ok(Kind::Seconds, json!(0.5)) && ok(Kind::Seconds, json!("2m")));
        assert!(!ok(Kind::Seconds, json!(-1)) && !ok(Kind::Seconds, json!(true)));
        assert!(ok(Kind::Time, json!("1-00:00:00")) && ok(Kind::Time, json!(90)));
        assert!(ok(Kind::Memory, json!("1.5GiB")) && ok(Kind::Memory, json!(512)));
        assert!(ok(Kind::Name, json!("debug")) && !ok(Kind::Name, json!("a b")));
        assert!(ok(Kind::Text, json!("a b")) && !ok(Kind::Text, json!("a\nb")));
        assert!(ok(Kind::Args, json!("-p -10")) && ok(Kind::Args, json!(["-x"])));
        assert!(!ok(Kind::Args, json!("-l 'x")) && !ok(Kind::Args, json!([1])));
        assert!(ok(Kind::Lines, json!("a\nb")) && ok(Kind::Table, json!({"A": "1"})));
        assert!(ok(Kind::Names, json!(true)) && ok(Kind::Names, json!(["PATH", "LC_*"])));
        assert!(!ok(Kind::Names, json!(["A B"])) && !ok(Kind::Names, json!(3)));
        let e = Value::new("memory", &json!("lots"))
            .memory()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"lots\"") && e.contains("memory"), "{e}");
        assert_eq!(
            Value::new("f", &json!("PATH, HOME")).names().unwrap(),
            EnvChoice::Names(vec!["PATH".into(), "HOME".into()])
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_that_backends_names() {
        let e = Opts::new("slurm", &json!({"cpu": 2}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("option \"cpu\" does not apply") && e.contains("did you mean `cpus`?"),
            "{e}"
        );
        let o = Opts::new("slurm", &json!({"partition": null, "cpus": 2})).unwrap();
        assert!(o.get("partition").is_none());
        assert_eq!(o.count("cpus").unwrap(), Some(2));
        assert!(Opts::new("slurm", &json!([1])).is_err());
    }
}
