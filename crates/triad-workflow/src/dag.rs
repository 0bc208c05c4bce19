//! DAG helpers over validated workflows.

use std::collections::{BTreeSet, HashMap};

use crate::Workflow;

/// Tasks that are not done and whose dependencies are all in `completed` (fan-in: a task
/// waits for every dependency), in definition order.
pub fn ready<'a>(
    workflow: &'a Workflow,
    completed: &BTreeSet<&str>,
    started: &BTreeSet<&str>,
) -> Vec<&'a str> {
    workflow
        .tasks
        .iter()
        .filter(|t| !completed.contains(t.id.as_str()) && !started.contains(t.id.as_str()))
        .filter(|t| t.depends_on.iter().all(|d| completed.contains(d.as_str())))
        .map(|t| t.id.as_str())
        .collect()
}

/// The number of tasks on the longest dependency chain, or `None` if there is a cycle or an
/// unknown dependency.
pub fn depth(workflow: &Workflow) -> Option<usize> {
    let by_id: HashMap<&str, &Vec<String>> = workflow
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), &t.depends_on))
        .collect();
    let mut memo: HashMap<&str, usize> = HashMap::new();
    fn visit<'a>(
        id: &'a str,
        by_id: &HashMap<&'a str, &'a Vec<String>>,
        memo: &mut HashMap<&'a str, usize>,
        on_path: &mut Vec<&'a str>,
    ) -> Option<usize> {
        if let Some(d) = memo.get(id) {
            return Some(*d);
        }
        if on_path.contains(&id) {
            return None;
        }
        on_path.push(id);
        let mut d = 0;
        for dep in by_id.get(id)?.iter() {
            d = d.max(visit(dep, by_id, memo, on_path)?);
        }
        on_path.pop();
        memo.insert(id, d + 1);
        Some(d + 1)
    }
    let mut max = 0;
    for t in &workflow.tasks {
        max = max.max(visit(&t.id, &by_id, &mut memo, &mut Vec::new())?);
    }
    Some(max)
}
