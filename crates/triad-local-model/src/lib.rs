//! The embedded default model's answers: pure functions, no I/O, no dependencies, so the
//! same code runs natively and inside the `triad-local` WebAssembly component
//! (`adapters/local`). It answers arithmetic ("What is 2+2?" → "4"), generates and answers
//! numbered questions (the seed's research workflow), echoes, changes case, reverses, counts
//! and summarises. Anything else gets a short deterministic description of the prompt, so a
//! demo always completes.

/// The answer to a call: `prompt` answered, cut to `max_tokens` tokens the way a real model
/// stops, with the token counts. An error only for prompts it cannot treat at all.
pub fn complete(prompt: &str, max_tokens: u32) -> Result<Completion, String> {
    let output = respond(prompt)?;
    let max = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    let output = if words(&output) > max {
        output
            .split_whitespace()
            .take(max)
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        output
    };
    Ok(Completion {
        input_tokens: i64::try_from(words(prompt)).unwrap_or(i64::MAX),
        output_tokens: i64::try_from(words(&output)).unwrap_or(i64::MAX),
        output,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub output: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Tokens, approximated as whitespace-separated words.
pub fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// The instruction before `:` (case-insensitive) and the text after it.
fn command<'a>(prompt: &'a str, names: &[&str]) -> Option<&'a str> {
    let (head, rest) = prompt.split_once(':')?;
    let head = head.trim().to_ascii_lowercase();
    names.contains(&head.as_str()).then(|| rest.trim())
}

/// The model's answer to `prompt`; an error only for prompts it cannot treat at all.
pub fn respond(prompt: &str) -> Result<String, String> {
    let prompt = prompt.trim();
    if prompt.is_empty() {
        return Err("empty prompt".to_owned());
    }
    if let Some(text) = command(prompt, &["echo", "repeat"]) {
        return Ok(text.to_owned());
    }
    if let Some(text) = command(prompt, &["uppercase", "upper"]) {
        return Ok(text.to_uppercase());
    }
    if let Some(text) = command(prompt, &["lowercase", "lower"]) {
        return Ok(text.to_lowercase());
    }
    if let Some(text) = command(prompt, &["reverse"]) {
        return Ok(text.chars().rev().collect());
    }
    if let Some(text) = command(prompt, &["count words", "word count"]) {
        return Ok(words(text).to_string());
    }
    if let Some(text) = command(prompt, &["summarize", "summarise", "summary"]) {
        return Ok(summary(text));
    }
    if let Some(text) = command(prompt, &["answer"]) {
        return Ok(answers(text));
    }
    if let Some(q) = questions(prompt) {
        return Ok(q);
    }
    if let Some(value) = arithmetic(prompt) {
        return value;
    }
    Ok(format!(
        "triad-local read {} words: {}",
        words(prompt),
        summary(prompt)
    ))
}

/// The first 24 words, list numbering dropped, with the total word count.
fn summary(text: &str) -> String {
    let kept: Vec<&str> = text
        .split_whitespace()
        .filter(|w| !(w.ends_with('.') && w[..w.len() - 1].chars().all(|c| c.is_ascii_digit())))
        .collect();
    let ellipsis = if kept.len() > 24 { " …" } else { "" };
    format!(
        "{}{ellipsis} ({} words)",
        kept.iter().take(24).copied().collect::<Vec<_>>().join(" "),
        words(text)
    )
}

/// "Generate N questions about T" → N numbered questions about T.
fn questions(prompt: &str) -> Option<String> {
    let lower = prompt.to_ascii_lowercase();
    let rest = lower.strip_prefix("generate ")?;
    let (n, rest) = rest.split_once(' ')?;
    let n: usize = match n {
        "a" | "one" => 1,
        "two" => 2,
        "three" => 3,
        "four" => 4,
        "five" => 5,
        other => other.parse().ok()?,
    };
    let topic_start = rest.find(" about ")? + " about ".len();
    if !rest.starts_with("question") {
        return None;
    }
    // Keep the topic's original case: same byte offsets, ASCII lowercasing.
    let offset = prompt.len() - rest.len() + topic_start;
    let topic = prompt
        .get(offset..)?
        .trim()
        .trim_end_matches(['.', '?', '!']);
    const FORMS: [&str; 6] = [
        "Who controls {t}, and who can prove it?",
        "Where is data processed when we rely on {t}?",
        "What happens to {t} when a provider fails?",
        "How is {t} audited after the fact?",
        "What does {t} cost, and who pays?",
        "Which laws govern {t} across borders?",
    ];
    let lines: Vec<String> = (0..n.clamp(1, 20))
        .map(|i| {
            let form = FORMS.get(i % FORMS.len()).copied().unwrap_or(FORMS[0]);
            format!("{}. {}", i + 1, form.replace("{t}", topic))
        })
        .collect();
    Some(lines.join("\n"))
}

/// "Answer: <numbered questions>" → one numbered answer per question.
fn answers(text: &str) -> String {
    let qs: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if qs.len() == 1
        && let Some(Ok(v)) = arithmetic(qs[0])
    {
        return v;
    }
    qs.iter()
        .enumerate()
        .map(|(i, q)| {
            let q = q
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
                .trim_end_matches('?');
            let subject = q
                .split_whitespace()
                .skip_while(|w| {
                    matches!(
                        w.to_ascii_lowercase().as_str(),
                        "who"
                            | "what"
                            | "where"
                            | "how"
                            | "which"
                            | "when"
                            | "why"
                            | "is"
                            | "does"
                            | "do"
                            | "happens"
                            | "to"
                            | "controls"
                            | "laws"
                            | "govern"
                    )
                })
                .collect::<Vec<_>>()
                .join(" ");
            format!(
                "{}. On \"{}\": keep the keys in the zone, route only to models inside it, and \
                 keep a verifiable log of every step.",
                i + 1,
                if subject.is_empty() { q } else { &subject }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Finds an arithmetic expression (digits, + - * / ^ and parentheses) and evaluates it.
fn arithmetic(prompt: &str) -> Option<Result<String, String>> {
    let candidate: String = {
        let mut best = String::new();
        let mut cur = String::new();
        for c in prompt.chars().chain(std::iter::once('#')) {
            if c.is_ascii_digit() || "+-*/^(). ×÷".contains(c) {
                cur.push(c);
            } else {
                let t = cur.trim().trim_end_matches('.').to_owned();
                if t.chars().any(|c| c.is_ascii_digit())
                    && t.chars().any(|c| "+-*/^×÷".contains(c))
                    && t.len() > best.len()
                {
                    best = t;
                }
                cur.clear();
            }
        }
        best
    };
    if candidate.is_empty() {
        return None;
    }
    let tokens: Vec<char> = candidate
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '×' => '*',
            '÷' => '/',
            c => c,
        })
        .collect();
    let mut parser = Parser { t: &tokens, i: 0 };
    let value = match parser.expr() {
        Ok(v) if parser.i == tokens.len() => v,
        Ok(_) => return None,
        Err(e) => return Some(Err(e)),
    };
    if !value.is_finite() {
        return Some(Ok("undefined".to_owned()));
    }
    Some(Ok(format_number(value)))
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

struct Parser<'a> {
    t: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.t.get(self.i).copied()
    }

    fn expr(&mut self) -> Result<f64, String> {
        let mut v = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.i += 1;
            let r = self.term()?;
            v = if op == '+' { v + r } else { v - r };
        }
        Ok(v)
    }

    fn term(&mut self) -> Result<f64, String> {
        let mut v = self.power()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.i += 1;
            let r = self.power()?;
            v = if op == '*' { v * r } else { v / r };
        }
        Ok(v)
    }

    fn power(&mut self) -> Result<f64, String> {
        let base = self.unary()?;
        if self.peek() == Some('^') {
            self.i += 1;
            let exp = self.power()?;
            return Ok(base.powf(exp));
        }
        Ok(base)
    }

    fn unary(&mut self) -> Result<f64, String> {
        if self.peek() == Some('-') {
            self.i += 1;
            return Ok(-self.unary()?);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<f64, String> {
        if self.peek() == Some('(') {
            self.i += 1;
            let v = self.expr()?;
            if self.peek() != Some(')') {
                return Err("unbalanced parenthesis".to_owned());
            }
            self.i += 1;
            return Ok(v);
        }
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.i += 1;
        }
        let text: String = self.t[start..self.i].iter().collect();
        text.parse::<f64>()
            .map_err(|_| format!("expected a number at {:?}", text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_success_criterion() {
        assert_eq!(respond("What is 2+2?").unwrap(), "4");
    }

    #[test]
    fn arithmetic_follows_precedence() {
        assert_eq!(respond("Compute (3 + 4) * 2 - 10 / 4").unwrap(), "11.5");
        assert_eq!(respond("what is 2^10?").unwrap(), "1024");
        assert_eq!(respond("What is -3 * 3?").unwrap(), "-9");
        assert_eq!(respond("What is 1/0?").unwrap(), "undefined");
    }

    #[test]
    fn text_tasks() {
        assert_eq!(respond("echo: hello world").unwrap(), "hello world");
        assert_eq!(respond("Uppercase: abc").unwrap(), "ABC");
        assert_eq!(respond("reverse: abc").unwrap(), "cba");
        assert_eq!(respond("count words: a b c").unwrap(), "3");
        assert!(respond("  ").is_err());
    }

    #[test]
    fn the_research_workflow_reads_well() {
        let q = respond("Generate 3 questions about data sovereignty").unwrap();
        assert_eq!(q.lines().count(), 3);
        assert!(q.starts_with("1. Who controls data sovereignty"), "{q}");
        let a = respond(&format!("Answer: {q}")).unwrap();
        assert_eq!(a.lines().count(), 3);
        assert!(a.starts_with("1. On \""), "{a}");
        let s = respond(&format!("Summarize: {a}")).unwrap();
        assert!(s.starts_with("On \"data sovereignty"), "{s}");
        assert!(s.ends_with(" words)"), "{s}");
    }

    #[test]
    fn max_tokens_truncates_and_usage_counts_words() {
        let c = complete("echo: one two three four", 2).unwrap();
        assert_eq!(c.output, "one two");
        assert_eq!((c.input_tokens, c.output_tokens), (5, 2));
    }
}
