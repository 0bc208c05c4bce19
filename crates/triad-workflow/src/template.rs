//! Prompt templates: `{task_id.output}` references another task's output. Other `{...}`
//! text is left alone (prompts may contain braces); `{{` and `}}` are literal braces.

/// A reference `{task.output}` found in a template, with its byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub task: String,
    pub offset: usize,
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Every `{id.output}` reference of a template, in order.
pub fn references(template: &str) -> Vec<Reference> {
    let mut out = Vec::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => i += 2,
            b'{' => {
                if let Some(end) = template[i + 1..].find('}') {
                    let inner = &template[i + 1..i + 1 + end];
                    if let Some(task) = inner.strip_suffix(".output")
                        && !task.is_empty()
                        && task.chars().all(is_id_char)
                    {
                        out.push(Reference {
                            task: task.to_owned(),
                            offset: i,
                        });
                    }
                    i += end + 2;
                } else {
                    break;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Fills a template: each `{id.output}` becomes `output(id)` (a reference with no output is
/// an error naming it), `{{` and `}}` become literal braces, other text stays as it is. Runs
/// in the executor, inside the zone, where the outputs may be opened.
pub fn fill<'a>(
    template: &str,
    output: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{')
            && let Some(end) = tail.find('}')
            && let Some(task) = tail[1..end].strip_suffix(".output")
            && !task.is_empty()
            && task.chars().all(is_id_char)
        {
            let value = output(task)
                .ok_or_else(|| format!("no output of task {task} to fill {{{task}.output}}"))?;
            out.push_str(value);
            rest = &tail[end + 1..];
            continue;
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_references_and_unescapes_braces() {
        let filled = fill("Answer: {q.output} {{q.output}} {x} }}", |t| {
            (t == "q").then_some("Why?")
        })
        .unwrap();
        assert_eq!(filled, "Answer: Why? {q.output} {x} }");
        let e = fill("{missing.output}", |_| None).unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn finds_output_references_only() {
        let refs =
            references("Answer {a.output} and {b-2.output}; not {c}, {{d.output}}, {x.input}");
        let tasks: Vec<&str> = refs.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(tasks, vec!["a", "b-2"]);
        assert_eq!(refs[0].offset, 7);
    }

    #[test]
    fn unterminated_brace_is_text() {
        assert!(references("open { brace").is_empty());
    }
}
