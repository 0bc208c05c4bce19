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

#[cfg(test)]
mod tests {
    use super::*;

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
