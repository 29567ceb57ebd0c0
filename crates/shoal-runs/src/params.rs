//! Parameter specs and their expansion: lists, integer and float ranges, grids (product of
//! axes) and groups (zipped axes), and `{name}` placeholders in the command.
//!
//! Syntax (one axis per `--param`, one zipped axis per `--group`):
//! `lr=0.1,0.01` a list · `seed=0..4` integers 0 to 4 inclusive · `x=0:1:0.25` start:stop:step,
//! stop included when it lands on a step · items of a list may be ranges (`s=0..2,10`) ·
//! `\,` is a literal comma. A group `a=1,2,3 b=x,y,z` zips its parameters (equal lengths).

use crate::error::{Result, RunError};
use std::collections::BTreeSet;

/// Names every command may use besides its parameters.
pub const BUILTINS: [&str; 4] = ["out", "task", "run", "name"];
/// No sweep this large is meant; a typo like `0..1000000000` should fail fast.
pub const MAX_TASKS: usize = 1_000_000;

/// One dimension of the grid: several names (a group) with rows of values zipped together.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub names: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A parsed set of axes; its product is the list of tasks.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    pub axes: Vec<Axis>,
}

pub type Combination = Vec<(String, String)>;

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// A parameter name must be an identifier and not one of the built-in placeholders.
pub fn check_name(spec: &str, name: &str) -> Result<()> {
    if !is_ident(name) {
        return Err(RunError::param(
            spec,
            format!("{name:?} is not a valid parameter name"),
            "names are letters, digits and _ (not starting with a digit), as in {lr}",
        ));
    }
    if BUILTINS.contains(&name) {
        return Err(RunError::param(
            spec,
            format!("{name:?} is reserved"),
            format!("{{{name}}} is provided by shoal; pick another name"),
        ));
    }
    Ok(())
}

/// Split `name=values` and check the name.
fn split_assignment(spec: &str) -> Result<(String, &str)> {
    let Some((name, values)) = spec.split_once('=') else {
        return Err(RunError::param(
            spec,
            "expected NAME=VALUES",
            "write e.g. --param lr=0.1,0.01 or --param seed=0..4",
        ));
    };
    let name = name.trim();
    check_name(spec, name)?;
    if values.is_empty() {
        return Err(RunError::param(
            spec,
            "no values",
            "give at least one value",
        ));
    }
    Ok((name.to_string(), values))
}

/// Split on commas not preceded by a backslash; `\,` becomes `,`.
fn split_items(values: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = values.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                chars.next();
                out.last_mut().expect("non-empty").push(',');
            }
            ',' => out.push(String::new()),
            _ => out.last_mut().expect("non-empty").push(c),
        }
    }
    out
}

fn decimals(s: &str) -> usize {
    match s.split_once('.') {
        Some((_, frac)) if !frac.contains(['e', 'E']) => frac.len(),
        Some(_) => 12,
        None if s.contains(['e', 'E']) => 12,
        None => 0,
    }
}

/// Expand one list item: an integer range `A..B`, a step range `A:B:S`, or a literal.
fn expand_item(spec: &str, item: &str, out: &mut Vec<String>) -> Result<()> {
    if let Some((a, b)) = item.split_once("..") {
        if let (Ok(a), Ok(b)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
            let n = a.abs_diff(b) as usize + 1;
            if out.len() + n > MAX_TASKS {
                return Err(RunError::param(spec, "range too large", "split the sweep"));
            }
            if a <= b {
                out.extend((a..=b).map(|v| v.to_string()));
            } else {
                out.extend((b..=a).rev().map(|v| v.to_string()));
            }
            return Ok(());
        }
    }
    let parts: Vec<&str> = item.split(':').map(str::trim).collect();
    if parts.len() == 3 {
        let nums: Vec<Option<f64>> = parts.iter().map(|p| p.parse::<f64>().ok()).collect();
        if let [Some(start), Some(stop), Some(step)] = nums[..] {
            if step == 0.0 || !step.is_finite() || (stop - start) * step < 0.0 {
                return Err(RunError::param(
                    spec,
                    format!(
                        "step {} never gets from {} to {}",
                        parts[2], parts[0], parts[1]
                    ),
                    "write START:STOP:STEP with a step that moves towards STOP, e.g. 0:1:0.25",
                ));
            }
            let count = ((stop - start) / step + 1e-9).floor() as usize + 1;
            if out.len() + count > MAX_TASKS {
                return Err(RunError::param(spec, "range too large", "split the sweep"));
            }
            let ints = parts.iter().all(|p| p.parse::<i64>().is_ok());
            let d = parts.iter().map(|p| decimals(p)).max().unwrap_or(0) as i32;
            let scale = 10f64.powi(d.min(15));
            for i in 0..count {
                let v = start + i as f64 * step;
                if ints {
                    out.push(format!("{}", v.round() as i64));
                } else {
                    // Round to the inputs' precision so 0.1 steps print 0.3, not 0.30000000000000004.
                    let r = (v * scale).round() / scale;
                    out.push(format!("{}", if r == 0.0 { 0.0 } else { r }));
                }
            }
            return Ok(());
        }
    }
    out.push(item.to_string());
    Ok(())
}

/// Parse `--param NAME=VALUES` into one axis.
pub fn parse_param(spec: &str) -> Result<Axis> {
    let (name, values) = split_assignment(spec)?;
    let mut vals = Vec::new();
    for item in split_items(values) {
        expand_item(spec, &item, &mut vals)?;
    }
    Ok(Axis {
        names: vec![name],
        rows: vals.into_iter().map(|v| vec![v]).collect(),
    })
}

/// Parse `--group A=.. B=..`: the parameters are zipped, so all must have as many values.
pub fn parse_group(specs: &[String]) -> Result<Axis> {
    let joined = specs.join(" ");
    let mut names = Vec::new();
    let mut columns: Vec<Vec<String>> = Vec::new();
    for spec in specs {
        let axis = parse_param(spec)?;
        if let Some(first) = columns.first() {
            if first.len() != axis.rows.len() {
                return Err(RunError::param(
                    &joined,
                    format!(
                        "{} has {} values but {} has {}",
                        axis.names[0],
                        axis.rows.len(),
                        names[0],
                        first.len()
                    ),
                    "a group zips its parameters: give each the same number of values \
                     (use separate --param for a product)",
                ));
            }
        }
        names.push(axis.names[0].clone());
        columns.push(axis.rows.into_iter().map(|mut r| r.remove(0)).collect());
    }
    let n = columns.first().map_or(0, Vec::len);
    let rows = (0..n)
        .map(|i| columns.iter().map(|c| c[i].clone()).collect())
        .collect();
    Ok(Axis { names, rows })
}

impl Grid {
    /// The grid of `--params-file` rows (outermost, in order), `--param` axes, then `--group`s.
    pub fn parse(
        params: &[String],
        groups: &[Vec<String>],
        files: &[std::path::PathBuf],
    ) -> Result<Grid> {
        let mut axes = Vec::new();
        for f in files {
            axes.push(crate::params_file::load(f)?);
        }
        for p in params {
            axes.push(parse_param(p)?);
        }
        for g in groups {
            axes.push(parse_group(g)?);
        }
        let grid = Grid { axes };
        let mut seen = BTreeSet::new();
        for name in grid.names() {
            if !seen.insert(name.clone()) {
                return Err(RunError::param(
                    &name,
                    "the parameter is given twice",
                    "give each parameter once; list all its values in one --param",
                ));
            }
        }
        let total = grid
            .axes
            .iter()
            .try_fold(1usize, |acc, a| acc.checked_mul(a.rows.len()));
        if total.is_none_or(|t| t > MAX_TASKS) {
            return Err(RunError::param(
                &params.join(" "),
                format!("the grid has more than {MAX_TASKS} combinations"),
                "split the sweep into several runs",
            ));
        }
        Ok(grid)
    }

    pub fn names(&self) -> Vec<String> {
        self.axes.iter().flat_map(|a| a.names.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.axes.iter().map(|a| a.rows.len()).product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every combination, as in itertools.product: the last axis varies fastest.
    pub fn expand(&self) -> Vec<Combination> {
        let mut out: Vec<Combination> = vec![Vec::new()];
        for axis in &self.axes {
            let mut next = Vec::with_capacity(out.len() * axis.rows.len());
            for prefix in &out {
                for row in &axis.rows {
                    let mut c = prefix.clone();
                    c.extend(axis.names.iter().cloned().zip(row.iter().cloned()));
                    next.push(c);
                }
            }
            out = next;
        }
        out
    }
}

/// A piece of a command argument: literal text or a `{name}` placeholder.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(String),
}

/// `dataset:NAME`, the placeholder of a dataset's path.
fn is_dataset_ref(s: &str) -> bool {
    s.strip_prefix(DATASET_PREFIX)
        .is_some_and(crate::registry::is_valid_name)
}

/// Placeholders `{dataset:NAME}` name a dataset of the config.
pub const DATASET_PREFIX: &str = "dataset:";

/// The placeholder names a command uses (parameters, built-ins, `dataset:NAME`), in order.
pub fn placeholders(command: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for arg in command {
        for p in pieces(arg) {
            if let Piece::Var(v) = p {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// Split an argument into text and placeholders. `{{` and `}}` are literal braces; braces
/// around anything that is not a name (`{print $1}`) are left alone.
fn pieces(arg: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            text.push(tail.as_bytes()[0] as char);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{') {
            if let Some(end) = tail.find('}') {
                let name = &tail[1..end];
                if is_ident(name) || is_dataset_ref(name) {
                    if !text.is_empty() {
                        out.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    out.push(Piece::Var(name.to_string()));
                    rest = &tail[end + 1..];
                    continue;
                }
            }
        }
        text.push(tail.as_bytes()[0] as char);
        rest = &tail[1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// Check every placeholder of `command` before anything runs.
pub fn check_placeholders(command: &[String], names: &[String]) -> Result<()> {
    for arg in command {
        for p in pieces(arg) {
            if let Piece::Var(v) = p {
                if let Some(d) = v.strip_prefix(DATASET_PREFIX) {
                    if !names.contains(&v) {
                        return Err(RunError::Command(format!(
                            "unknown dataset {{{v}}} in the command argument {arg:?}\n\
                             hint: define it in shoal.toml as [datasets] {d} = \"path\""
                        )));
                    }
                    continue;
                }
                if !names.contains(&v) && !BUILTINS.contains(&v.as_str()) {
                    let mut known: Vec<String> = names
                        .iter()
                        .filter(|n| !n.starts_with(DATASET_PREFIX))
                        .cloned()
                        .collect();
                    known.extend(BUILTINS.iter().map(|s| s.to_string()));
                    return Err(RunError::Command(format!(
                        "unknown placeholder {{{v}}} in the command argument {arg:?}\n\
                         hint: known placeholders are {}; declare it with --param {v}=... \
                         (write {{{{ and }}}} for literal braces)",
                        known
                            .iter()
                            .map(|k| format!("{{{k}}}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Substitute placeholders; `vars` holds parameters and built-ins.
pub fn render(command: &[String], vars: &[(String, String)]) -> Vec<String> {
    command
        .iter()
        .map(|arg| {
            pieces(arg)
                .into_iter()
                .map(|p| match p {
                    Piece::Text(t) => t,
                    Piece::Var(v) => vars
                        .iter()
                        .find(|(k, _)| *k == v)
                        .map(|(_, val)| val.clone())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .collect()
}

/// A value as JSON: an integer or float when it parses as one, else a string.
pub fn typed(v: &str) -> serde_json::Value {
    if let Ok(i) = v.parse::<i64>() {
        return i.into();
    }
    if let Ok(f) = v.parse::<f64>() {
        if f.is_finite() && v.chars().any(|c| c.is_ascii_digit()) {
            return f.into();
        }
    }
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(spec: &str) -> Vec<String> {
        parse_param(spec)
            .unwrap()
            .rows
            .into_iter()
            .map(|r| r[0].clone())
            .collect()
    }

    #[test]
    fn lists_and_ranges() {
        assert_eq!(vals("lr=0.1,0.01,0.001"), ["0.1", "0.01", "0.001"]);
        assert_eq!(vals("seed=0..4"), ["0", "1", "2", "3", "4"]);
        assert_eq!(vals("seed=3..1"), ["3", "2", "1"]);
        assert_eq!(vals("s=0..2,10"), ["0", "1", "2", "10"]);
        assert_eq!(vals("x=0:1:0.25"), ["0", "0.25", "0.5", "0.75", "1"]);
        assert_eq!(vals("x=0:0.3:0.1"), ["0", "0.1", "0.2", "0.3"]);
        assert_eq!(vals("n=0:10:5"), ["0", "5", "10"]);
        assert_eq!(vals("x=1:0:-0.5"), ["1", "0.5", "0"]);
        assert_eq!(vals("s=a\\,b,c"), ["a,b", "c"]);
        assert_eq!(vals("t=10:30"), ["10:30"]);
        assert_eq!(vals("f=a..b"), ["a..b"]);
    }

    #[test]
    fn bad_specs_are_clear() {
        for (spec, needle) in [
            ("lr", "expected NAME=VALUES"),
            ("1x=3", "not a valid parameter name"),
            ("out=3", "reserved"),
            ("x=0:1:-1", "never gets"),
            ("x=", "no values"),
        ] {
            let e = parse_param(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
        let e = Grid::parse(&["a=1".into(), "a=2".into()], &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = Grid::parse(
            &["a=0..999".into(), "b=0..999".into(), "c=0..9".into()],
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn grid_is_a_product_with_last_axis_fastest() {
        let g = Grid::parse(&["lr=0.1,0.01".into(), "seed=0..2".into()], &[], &[]).unwrap();
        assert_eq!(g.len(), 6);
        let c = g.expand();
        let flat: Vec<String> = c.iter().map(|c| format!("{}/{}", c[0].1, c[1].1)).collect();
        assert_eq!(
            flat,
            ["0.1/0", "0.1/1", "0.1/2", "0.01/0", "0.01/1", "0.01/2"]
        );
        assert_eq!(
            c[4],
            vec![("lr".into(), "0.01".into()), ("seed".into(), "1".into())]
        );
    }

    #[test]
    fn groups_zip_and_combine_with_params() {
        let g = Grid::parse(
            &["seed=0..1".into()],
            &[vec!["a=1,2,3".into(), "b=x,y,z".into()]],
            &[],
        )
        .unwrap();
        assert_eq!(g.names(), ["seed", "a", "b"]);
        let c = g.expand();
        assert_eq!(c.len(), 6);
        let flat: Vec<String> = c
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join("")
            })
            .collect();
        assert_eq!(flat, ["01x", "02y", "03z", "11x", "12y", "13z"]);
        let e = parse_group(&["a=1,2".into(), "b=x".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("b has 1 values but a has 2"), "{e}");
    }

    #[test]
    fn a_params_file_is_one_zipped_axis_outside_the_others() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("rows.csv");
        std::fs::write(&f, "lr,opt\n0.1,adam\n0.01,sgd\n").unwrap();
        let g = Grid::parse(&["seed=0..1".into()], &[], std::slice::from_ref(&f)).unwrap();
        assert_eq!(g.names(), ["lr", "opt", "seed"]);
        let flat: Vec<String> = g
            .expand()
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        assert_eq!(
            flat,
            ["0.1/adam/0", "0.1/adam/1", "0.01/sgd/0", "0.01/sgd/1"]
        );
        let e = Grid::parse(&["lr=1".into()], &[], &[f])
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn no_params_is_one_task() {
        let g = Grid::parse(&[], &[], &[]).unwrap();
        assert_eq!(g.expand(), vec![Vec::<(String, String)>::new()]);
    }

    #[test]
    fn placeholders() {
        let cmd: Vec<String> = [
            "python",
            "t.py",
            "--lr={lr}",
            "{out}/m.pt",
            "{{lit}}",
            "{print $1}",
        ]
        .map(String::from)
        .to_vec();
        check_placeholders(&cmd, &["lr".into()]).unwrap();
        let r = render(
            &cmd,
            &[("lr".into(), "0.1".into()), ("out".into(), "/r/3".into())],
        );
        assert_eq!(
            r,
            [
                "python",
                "t.py",
                "--lr=0.1",
                "/r/3/m.pt",
                "{lit}",
                "{print $1}"
            ]
        );
        let ds = vec!["lr".to_string(), "dataset:iris".to_string()];
        check_placeholders(&["{dataset:iris}/x.csv".into()], &ds).unwrap();
        let e = check_placeholders(&["{dataset:mnist}".into()], &ds)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[datasets] mnist = "), "{e}");
        assert_eq!(
            render(
                &["{dataset:iris}/x.csv".into()],
                &[("dataset:iris".into(), "/d".into())]
            ),
            ["/d/x.csv"]
        );
        assert_eq!(
            super::placeholders(&["{a}{out}".into(), "{a:3}".into()]),
            ["a", "out"]
        );
        let e = check_placeholders(&["{seed}".into()], &["lr".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown placeholder {seed}") && e.contains("{lr}"),
            "{e}"
        );
    }

    #[test]
    fn typed_values() {
        assert_eq!(typed("3"), serde_json::json!(3));
        assert_eq!(typed("0.5"), serde_json::json!(0.5));
        assert_eq!(typed("inf"), serde_json::json!("inf"));
        assert_eq!(typed("adam"), serde_json::json!("adam"));
    }
}
