//! Worker shapes: the resources one map or submit asks for (`resources={...}`,
//! docs/resources.md), checked against the registry, and [`Shaped`], the one scheduler the
//! engine drives, made of one backend per shape.
//!
//! Shape 0 is the pool's own options; shape `k` > 0 is those options with a call's resources
//! laid over them, run by a backend of its own whose worker ids start with `s{k}` (`s1b2-0`),
//! so that every id names its shape and no two shapes' ids collide.

use crate::error::{Result, SchedError};
use crate::registry::{self, Opt, Problem};
use crate::runner::CallStats;
use crate::{LaunchSpec, Scheduler, WorkerEvent};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::time::Duration;

/// A worker shape's number within its session (0: the pool's own options).
pub type ShapeId = u32;

/// A call's resources, resolved for a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Short and canonical (`cpus=2,memory=4G`): equal resources give equal labels, and
    /// `shoal sessions`/`show`/`top` print it next to the shape's workers.
    pub label: String,
    /// The backend's own options for workers of this shape: the pool's, with the resources
    /// laid over them.
    pub options: Json,
    /// The shape's own cap on workers at once (`resources={"workers": N}`); the pool's
    /// `workers` when `None`.
    pub workers: Option<usize>,
}

/// The one resource every backend takes per call: the shape's own cap on workers at once.
/// It is the engine's, not the backend's, so it is never laid over the backend options.
pub const WORKERS: &str = "workers";

/// The resources a backend takes per call.
pub fn per_call(backend: &registry::Backend) -> impl Iterator<Item = &'static Opt> {
    backend
        .options
        .iter()
        .chain(backend.labels.iter())
        .filter(|o| o.per_call)
}

/// Check `resources` for `backend` and lay them over the pool's `base` options. Nothing is
/// run; an unknown resource, a bad value or a combination the backend refuses is an error
/// naming the problem and the resources there are, before anything is submitted.
pub fn resolve(backend: &str, base: &Json, resources: &Map<String, Json>) -> Result<Shape> {
    let b = registry::backend(backend)?;
    let known: Vec<&str> = per_call(b)
        .map(|o| o.name)
        .chain(std::iter::once(WORKERS))
        .collect();
    let mut merged = base.as_object().cloned().unwrap_or_default();
    let mut label = Vec::new();
    let mut workers = None;
    for (key, value) in resources {
        if key == WORKERS {
            let n = crate::options::Value::new(key, value).count()?;
            label.push(format!("{key}={n}"));
            workers = Some(n as usize);
            continue;
        }
        let Some(spec) = per_call(b).find(|o| o.name == key) else {
            let hint = match registry::closest(key, known.iter().copied()) {
                Some(c) => format!("did you mean `{c}`? "),
                None => String::new(),
            };
            return Err(Problem {
                key: Some(key.clone()),
                message: format!(
                    "{key:?} is not a resource a call can ask for on the {backend} backend"
                ),
                hint: format!(
                    "{hint}per-call resources of {backend}: {}; other options go to the pool (docs/resources.md)",
                    known.join(", ")
                ),
            }
            .into());
        };
        label.push(format!("{key}={}", show(value)));
        if b.labels.iter().any(|o| o.name == spec.name) {
            crate::options::Value::new(key, value).check(spec.kind)?;
        } else {
            registry::check_option(backend, key, value)?;
            merged.insert(key.clone(), value.clone());
        }
    }
    let options = Json::Object(merged);
    crate::parse_options(backend, 1, &options)?;
    Ok(Shape {
        label: label.join(","),
        options,
        workers,
    })
}

/// A value as a label shows it: strings bare, tables as `k=v` lists.
fn show(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}:{}", show(v)))
            .collect::<Vec<_>>()
            .join("+"),
        Json::Array(a) => a.iter().map(show).collect::<Vec<_>>().join("+"),
        other => other.to_string(),
    }
}

/// What the worker ids of shape `k` start with (nothing for the pool's own shape).
pub fn prefix(shape: ShapeId) -> String {
    if shape == 0 {
        String::new()
    } else {
        format!("s{shape}")
    }
}

/// The shape a worker id belongs to, from its prefix ([`prefix`]).
pub fn shape_of(id: &str) -> ShapeId {
    let Some(rest) = id.strip_prefix('s') else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let next = rest.as_bytes().get(digits);
    if digits == 0 || !matches!(next, Some(b'b' | b'w')) {
        return 0;
    }
    rest[..digits].parse().unwrap_or(0)
}

/// The scheduler of a session with several shapes: one backend per shape behind the one
/// [`Scheduler`] the engine drives. Calls about particular workers go to their shape's
/// backend (by id); `submit` starts workers of the pool's own shape, [`Shaped::submit_to`]
/// of any.
pub struct Shaped {
    parts: Vec<(String, Box<dyn Scheduler>)>,
}

impl Shaped {
    pub fn new(base: Box<dyn Scheduler>) -> Shaped {
        Shaped {
            parts: vec![(String::new(), base)],
        }
    }

    /// Add a shape whose backend passed its preflight; its workers' ids must start with
    /// [`prefix`] of the returned id.
    pub fn add(&mut self, label: String, sched: Box<dyn Scheduler>) -> ShapeId {
        self.parts.push((label, sched));
        (self.parts.len() - 1) as ShapeId
    }

    pub fn shapes(&self) -> std::ops::Range<ShapeId> {
        0..self.parts.len() as ShapeId
    }

    /// The shape's label ("" for the pool's own).
    pub fn label(&self, shape: ShapeId) -> &str {
        self.parts.get(shape as usize).map_or("", |p| p.0.as_str())
    }

    pub fn capacity_of(&self, shape: ShapeId) -> usize {
        self.parts.get(shape as usize).map_or(0, |p| p.1.capacity())
    }

    /// Only the pool's own shape keeps idle workers (on a backend that keeps them at all):
    /// a shape's workers are wanted only while its work waits.
    pub fn keep_warm_of(&self, shape: ShapeId) -> bool {
        shape == 0 && self.parts[0].1.keep_warm()
    }

    pub fn submit_to(
        &mut self,
        shape: ShapeId,
        spec: &LaunchSpec,
        n: usize,
    ) -> Result<Vec<String>> {
        match self.parts.get_mut(shape as usize) {
            Some(p) => p.1.submit(spec, n),
            None => Err(SchedError::Config(format!("no worker shape {shape}"))),
        }
    }
}

impl Scheduler for Shaped {
    fn name(&self) -> &'static str {
        self.parts[0].1.name()
    }

    fn capacity(&self) -> usize {
        self.parts[0].1.capacity()
    }

    fn keep_warm(&self) -> bool {
        self.parts[0].1.keep_warm()
    }

    fn poll_interval(&self) -> Duration {
        self.parts
            .iter()
            .map(|p| p.1.poll_interval())
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    fn preflight(&mut self, spec: &LaunchSpec) -> Result<()> {
        self.parts[0].1.preflight(spec)
    }

    fn submit(&mut self, spec: &LaunchSpec, n: usize) -> Result<Vec<String>> {
        self.submit_to(0, spec, n)
    }

    fn poll(&mut self) -> Result<Vec<WorkerEvent>> {
        let mut out = Vec::new();
        for p in &mut self.parts {
            out.extend(p.1.poll()?);
        }
        Ok(out)
    }

    fn cancel(&mut self, workers: &[String]) -> Result<()> {
        // One call per shape: a backend cancels what it is given together (one scancel).
        let mut by_shape: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for id in workers {
            let k = (shape_of(id) as usize).min(self.parts.len() - 1);
            by_shape.entry(k).or_default().push(id.clone());
        }
        for (k, ids) in by_shape {
            self.parts[k].1.cancel(&ids)?;
        }
        Ok(())
    }

    fn cancel_all(&mut self) -> Result<()> {
        let mut first = Ok(());
        for p in &mut self.parts {
            let r = p.1.cancel_all();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn job_ids(&self) -> Vec<String> {
        self.parts.iter().flat_map(|p| p.1.job_ids()).collect()
    }

    fn notes(&mut self) -> Vec<String> {
        self.parts.iter_mut().flat_map(|p| p.1.notes()).collect()
    }

    fn placed(&mut self) -> Vec<(String, String)> {
        self.parts.iter_mut().flat_map(|p| p.1.placed()).collect()
    }

    fn calls(&self) -> BTreeMap<String, CallStats> {
        let mut out: BTreeMap<String, CallStats> = BTreeMap::new();
        for p in &self.parts {
            for (program, s) in p.1.calls() {
                let t = out.entry(program).or_default();
                t.calls += s.calls;
                t.failures += s.failures;
                t.timeouts += s.timeouts;
                t.total += s.total;
                t.max = t.max.max(s.max);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn resources_lay_over_the_pool_options_with_a_canonical_label() {
        let base = json!({"cpus": 1, "partition": "debug", "time": "10m"});
        let s = resolve("slurm", &base, &map(json!({"memory": "4G", "cpus": 2}))).unwrap();
        assert_eq!(s.label, "cpus=2,memory=4G");
        assert_eq!(
            s.options,
            json!({"cpus": 2, "memory": "4G", "partition": "debug", "time": "10m"})
        );
        let s = resolve("htcondor", &json!({}), &map(json!({"request_gpus": 1}))).unwrap();
        assert_eq!(s.label, "request_gpus=1");
        let s = resolve("sge", &json!({"pe": "smp"}), &map(json!({"slots": 4}))).unwrap();
        assert_eq!(s.options["slots"], 4);
        // local: a label only, the options stay the pool's
        let s = resolve("local", &json!({}), &map(json!({"cpus": 2}))).unwrap();
        assert_eq!((s.label.as_str(), &s.options), ("cpus=2", &json!({})));
    }

    #[test]
    fn unknown_or_bad_resources_are_refused_naming_the_known_ones() {
        let e = resolve("slurm", &json!({}), &map(json!({"cpu": 2}))).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("\"cpu\" is not a resource"), "{text}");
        assert!(text.contains("did you mean `cpus`?"), "{text}");
        assert!(text.contains("cpus, memory, time, partition"), "{text}");
        // a pool-wide option is not a per-call resource
        let e = resolve("slurm", &json!({}), &map(json!({"account": "x"}))).unwrap_err();
        assert!(e.to_string().contains("not a resource"), "{e}");
        let e = resolve("slurm", &json!({}), &map(json!({"cpus": 0}))).unwrap_err();
        assert!(e.to_string().contains("cpus"), "{e}");
        let e = resolve("htcondor", &json!({}), &map(json!({"cpus": 2}))).unwrap_err();
        assert!(e.to_string().contains("request_cpus"), "{e}");
        // the backend's own rules about combinations: SGE slots need a parallel environment
        let e = resolve("sge", &json!({}), &map(json!({"slots": 2}))).unwrap_err();
        assert!(e.to_string().contains("pe"), "{e}");
    }

    #[test]
    fn a_shape_may_cap_its_own_workers_on_every_backend() {
        for (backend, key) in [("slurm", "cpus"), ("sge", "h_rt"), ("local", "cpus")] {
            let r = map(json!({key: 2, "workers": 3}));
            let s = resolve(backend, &json!({}), &r).unwrap_or_else(|e| panic!("{backend}: {e}"));
            assert_eq!(s.workers, Some(3), "{backend}");
            assert!(s.label.ends_with(",workers=3"), "{}", s.label);
            assert!(
                s.options.get("workers").is_none(),
                "{backend}: the cap is the engine's"
            );
        }
        let s = resolve("htcondor", &json!({}), &map(json!({"workers": "2"}))).unwrap();
        assert_eq!((s.label.as_str(), s.workers), ("workers=2", Some(2)));
        let e = resolve("slurm", &json!({}), &map(json!({"workers": 0}))).unwrap_err();
        assert!(e.to_string().contains("workers"), "{e}");
        let e = resolve("slurm", &json!({}), &map(json!({"worker": 2}))).unwrap_err();
        assert!(e.to_string().contains("did you mean `workers`?"), "{e}");
    }

    #[test]
    fn ids_name_their_shape() {
        assert_eq!(shape_of("b1-0"), 0);
        assert_eq!(shape_of("w0003"), 0);
        assert_eq!(shape_of(&format!("{}b2-0.1", prefix(3))), 3);
        assert_eq!(shape_of(&format!("{}w0001", prefix(12))), 12);
        assert_eq!(shape_of("sb1-0"), 0);
        assert_eq!(shape_of("s1x"), 0);
    }
}
