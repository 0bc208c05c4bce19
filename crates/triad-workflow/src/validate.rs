//! Validation before anything is written. Every error names the field (`tasks[1].depends_on`)
//! and, where there is one, the task; all errors are reported at once.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::{Workflow, depth, references};

/// Documented defaults; see `docs/workflows.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_tasks: usize,
    pub max_prompt_bytes: usize,
    pub max_depth: usize,
    pub max_attempts: i32,
    pub max_tokens: i32,
    pub max_timeout_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tasks: 100,
            max_prompt_bytes: 64 * 1024,
            max_depth: 32,
            max_attempts: 10,
            max_tokens: 1_000_000,
            max_timeout_ms: 24 * 60 * 60 * 1000,
        }
    }
}

/// What validation checks against: the sovereignty policy's zones and groups, the models
/// that exist (`None` skips the model checks), and the limits.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub zones: &'a [String],
    pub groups: &'a [(String, Vec<String>)],
    pub models: Option<&'a [ModelOffer]>,
    pub limits: Limits,
}

/// What a model offers, as far as submission can know: where it processes data, its
/// specialties, and the declared figures cost estimates use. Health, breakers and measured
/// latency are the router's, at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOffer {
    pub id: String,
    /// Empty: the model runs inside the executor, so in whichever zone executes the task.
    pub zones: Vec<String>,
    pub specialties: Vec<String>,
    /// Millionths of a credit per 1K input / output tokens.
    pub input_micros_per_1k: i64,
    pub output_micros_per_1k: i64,
    pub max_context: u32,
    pub latency_p50_ms: u64,
    pub latency_p95_ms: u64,
}

impl ModelOffer {
    /// An offer with no price and generous declared figures (tests, defaults).
    pub fn new(id: impl Into<String>, zones: Vec<String>, specialties: Vec<String>) -> Self {
        Self {
            id: id.into(),
            zones,
            specialties,
            input_micros_per_1k: 0,
            output_micros_per_1k: 0,
            max_context: 65_536,
            latency_p50_ms: 1,
            latency_p95_ms: 1,
        }
    }
}

impl ModelOffer {
    /// Why this model cannot serve a task allowed in `zones` needing `specialties`.
    fn refusal(&self, zones: &BTreeSet<String>, specialties: &[String]) -> Option<String> {
        if let Some(z) = self.zones.iter().find(|z| !zones.contains(*z)) {
            return Some(format!("{} processes data in {z}", self.id));
        }
        specialties
            .iter()
            .find(|s| !self.specialties.contains(s))
            .map(|s| format!("{} lacks specialty {s}", self.id))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid workflow: {}", lines.join("; "))
    }
}

struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// An account id: what the ledger keys its topic by.
pub fn valid_account(account: &str) -> bool {
    (1..=128).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@".contains(&b))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Context<'_> {
    /// A zone or group name as the set of zones it stands for; `None` if unknown.
    fn expand(&self, name: &str) -> Option<BTreeSet<String>> {
        if self.zones.iter().any(|z| z == name) {
            return Some(BTreeSet::from([name.to_owned()]));
        }
        self.groups
            .iter()
            .find(|(g, _)| g == name)
            .map(|(_, zs)| zs.iter().cloned().collect())
    }
}

impl Workflow {
    /// Checks the workflow; `Err` lists every problem.
    pub fn validate(&self, ctx: &Context<'_>) -> Result<(), ValidationErrors> {
        let mut e = Errors(Vec::new());
        let limits = ctx.limits;
        if self.name.trim().is_empty() {
            e.push("name", "must not be empty");
        } else if self.name.len() > 128 {
            e.push("name", "must be at most 128 bytes");
        }
        if self.tasks.is_empty() {
            e.push("tasks", "a workflow needs at least one task");
        }
        if let Some(account) = &self.account
            && !valid_account(account)
        {
            e.push(
                "account",
                format!("{account:?} must be 1-128 characters of A-Z a-z 0-9 . _ - : @"),
            );
        }
        if self.tasks.len() > limits.max_tasks {
            e.push(
                "tasks",
                format!(
                    "{} tasks; the limit is {}",
                    self.tasks.len(),
                    limits.max_tasks
                ),
            );
        }
        let mut workflow_zones = BTreeSet::new();
        for (i, z) in self.zones.iter().enumerate() {
            match ctx.expand(z) {
                Some(zs) => workflow_zones.extend(zs),
                None => e.push(
                    format!("zones[{i}]"),
                    format!("unknown zone or group {z:?}"),
                ),
            }
        }

        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, t) in self.tasks.iter().enumerate() {
            if !valid_id(&t.id) {
                e.push(
                    format!("tasks[{i}].id"),
                    format!("{:?} must be 1-64 characters of A-Z a-z 0-9 _ -", t.id),
                );
            } else if let Some(first) = seen.insert(&t.id, i) {
                e.push(
                    format!("tasks[{i}].id"),
                    format!("duplicate task id {:?} (also tasks[{first}])", t.id),
                );
            }
        }
        let ids: HashSet<&str> = self.tasks.iter().map(|t| t.id.as_str()).collect();

        // Effective zones per task, for the templating rule below.
        let mut effective: HashMap<&str, BTreeSet<String>> = HashMap::new();
        for (i, t) in self.tasks.iter().enumerate() {
            let f = |name: &str| format!("tasks[{i}].{name}");
            // A sealed prompt (the edge sealed it after checking the plaintext) is opaque
            // here: only the executor inside its zones sees the text.
            let sealed = triad_domain::is_sealed(t.prompt.as_bytes());
            if !sealed && t.prompt.trim().is_empty() {
                e.push(f("prompt"), format!("task {:?} has an empty prompt", t.id));
            } else if !sealed && t.prompt.len() > limits.max_prompt_bytes {
                e.push(
                    f("prompt"),
                    format!(
                        "{} bytes; the limit is {}",
                        t.prompt.len(),
                        limits.max_prompt_bytes
                    ),
                );
            }
            let mut deps = HashSet::new();
            for (j, d) in t.depends_on.iter().enumerate() {
                if d == &t.id {
                    e.push(
                        format!("tasks[{i}].depends_on[{j}]"),
                        format!("task {:?} depends on itself", t.id),
                    );
                } else if !ids.contains(d.as_str()) {
                    e.push(
                        format!("tasks[{i}].depends_on[{j}]"),
                        format!("unknown task {d:?}"),
                    );
                } else if !deps.insert(d.as_str()) {
                    e.push(
                        format!("tasks[{i}].depends_on[{j}]"),
                        format!("{d:?} is listed twice"),
                    );
                }
            }
            for r in references(if sealed { "" } else { &t.prompt }) {
                if !t.depends_on.contains(&r.task) {
                    e.push(
                        f("prompt"),
                        format!(
                            "references {{{}.output}} but {:?} is not in depends_on of task {:?}",
                            r.task, r.task, t.id
                        ),
                    );
                }
            }
            let mut zones = BTreeSet::new();
            for (j, z) in t.zones.iter().enumerate() {
                match ctx.expand(z) {
                    Some(zs) => zones.extend(zs),
                    None => e.push(
                        format!("tasks[{i}].zones[{j}]"),
                        format!("unknown zone or group {z:?}"),
                    ),
                }
            }
            if t.zones.is_empty() {
                if self.zones.is_empty() {
                    e.push(
                        f("zones"),
                        format!("task {:?} has no zones and the workflow sets none", t.id),
                    );
                }
                zones = workflow_zones.clone();
            }
            if let (Some(model), Some(models)) = (&t.model, ctx.models)
                && !models.iter().any(|m| &m.id == model)
            {
                e.push(f("model"), format!("unknown model {model:?}"));
            } else if let Some(models) = ctx.models
                && !zones.is_empty()
            {
                // A workflow that cannot be served inside its zones is refused now, not left
                // to fail at run time.
                let candidates = models
                    .iter()
                    .filter(|m| t.model.as_ref().is_none_or(|h| *h == m.id));
                let refusals: Vec<String> = candidates
                    .map(|m| m.refusal(&zones, &t.specialties))
                    .collect::<Option<Vec<String>>>()
                    .unwrap_or_default();
                if !refusals.is_empty() || models.is_empty() {
                    e.push(
                        f("zones"),
                        format!(
                            "task {:?} cannot be served inside {:?}: {}",
                            t.id,
                            zones,
                            if refusals.is_empty() {
                                "no model is configured".to_owned()
                            } else {
                                refusals.join("; ")
                            }
                        ),
                    );
                }
            }
            effective.insert(&t.id, zones);
            if !(1..=limits.max_tokens).contains(&t.max_tokens) {
                e.push(
                    f("max_tokens"),
                    format!("must be between 1 and {}", limits.max_tokens),
                );
            }
            if !(1..=limits.max_timeout_ms).contains(&t.timeout_ms) {
                e.push(
                    f("timeout_ms"),
                    format!("must be between 1 and {}", limits.max_timeout_ms),
                );
            }
            if !(1..=limits.max_attempts).contains(&t.retry.max_attempts) {
                e.push(
                    f("retry.max_attempts"),
                    format!("must be between 1 and {}", limits.max_attempts),
                );
            }
        }

        // No leak by templating: a task may read an output only if it runs inside every zone
        // that output may be opened in.
        for (i, t) in self.tasks.iter().enumerate() {
            let Some(mine) = effective.get(t.id.as_str()) else {
                continue;
            };
            for r in references(&t.prompt) {
                if let Some(theirs) = effective.get(r.task.as_str())
                    && !mine.is_subset(theirs)
                {
                    let outside: Vec<&String> = mine.difference(theirs).collect();
                    e.push(
                        format!("tasks[{i}].zones"),
                        format!(
                            "task {:?} may run in {outside:?}, outside the zones of {:?} whose output it reads",
                            t.id, r.task
                        ),
                    );
                }
            }
        }

        if let Some(cycle) = find_cycle(self) {
            e.push("tasks", format!("dependency cycle: {}", cycle.join(" -> ")));
        } else if e.0.iter().all(|x| !x.field.contains("depends_on"))
            && let Some(d) = depth(self)
            && d > limits.max_depth
        {
            e.push(
                "tasks",
                format!(
                    "dependency chain of {d} tasks; the limit is {}",
                    limits.max_depth
                ),
            );
        }
        if e.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(e.0))
        }
    }
}

/// A cycle among known dependencies, as the path of task ids that closes it.
fn find_cycle(w: &Workflow) -> Option<Vec<String>> {
    let deps: HashMap<&str, Vec<&str>> = w
        .tasks
        .iter()
        .map(|t| {
            (
                t.id.as_str(),
                t.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        id: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| *p == id).unwrap_or(0);
                let mut cycle: Vec<String> =
                    path[start..].iter().map(|s| (*s).to_owned()).collect();
                cycle.push(id.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(id, Mark::Visiting);
        path.push(id);
        for d in deps.get(id).into_iter().flatten() {
            if deps.contains_key(d)
                && let Some(c) = visit(d, deps, marks, path)
            {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(id, Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    for t in &w.tasks {
        if let Some(c) = visit(&t.id, &deps, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}
