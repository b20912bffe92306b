//! Comments in `agent.json`, as the Kinesis Agent reads it: its `Configuration.get` parses with
//! Jackson's `ALLOW_COMMENTS`, so `// to the end of the line` and `/* blocks */` may appear
//! wherever whitespace may. Nothing else beyond JSON is accepted (Jackson's other leniencies —
//! single quotes, trailing commas, `#` comments — are off there too).
//!
//! ```text
//!   text ─► strip_comments (comments → spaces, newlines kept: serde_json's line/column stay
//!           right; strings untouched, escapes honoured) ─► serde_json
//! ```

/// An unterminated block comment, at 1-based `line` and `column` of its `/*`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unterminated /* comment starting at line {line} column {column}")]
pub struct UnterminatedComment {
    /// Line of the `/*`.
    pub line: usize,
    /// Column (in characters) of the `/*`.
    pub column: usize,
}

/// `text` with every comment outside strings replaced by spaces (newlines kept).
pub fn strip_comments(text: &str) -> Result<String, UnterminatedComment> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Code,
        Str,
        StrEscape,
        Line,
        Block,
        BlockStar,
    }
    let mut out = String::with_capacity(text.len());
    let mut state = State::Code;
    let (mut line, mut column) = (1, 0);
    let mut block_at = (0, 0);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
            column = 0;
        } else {
            column += 1;
        }
        state = match state {
            State::Code => match c {
                '"' => {
                    out.push(c);
                    State::Str
                }
                '/' if chars.peek() == Some(&'/') => {
                    chars.next();
                    column += 1;
                    out.push_str("  ");
                    State::Line
                }
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    block_at = (line, column);
                    column += 1;
                    out.push_str("  ");
                    State::Block
                }
                _ => {
                    out.push(c);
                    State::Code
                }
            },
            State::Str => {
                out.push(c);
                match c {
                    '\\' => State::StrEscape,
                    '"' => State::Code,
                    _ => State::Str,
                }
            }
            State::StrEscape => {
                out.push(c);
                State::Str
            }
            State::Line => {
                if c == '\n' {
                    out.push('\n');
                    State::Code
                } else {
                    out.push(blank(c));
                    State::Line
                }
            }
            State::Block | State::BlockStar => {
                out.push(blank(c));
                match c {
                    '/' if state == State::BlockStar => State::Code,
                    '*' => State::BlockStar,
                    _ => State::Block,
                }
            }
        };
    }
    if matches!(state, State::Block | State::BlockStar) {
        return Err(UnterminatedComment {
            line: block_at.0,
            column: block_at.1,
        });
    }
    Ok(out)
}

/// A comment's character as blank space: newlines stay (positions), the rest become one space.
fn blank(c: char) -> char {
    if c == '\n' || c == '\r' { c } else { ' ' }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_go_strings_stay_and_positions_hold() {
        // (input, expected after stripping, parsed as JSON equal to)
        let table: &[(&str, &str)] = &[
            ("{}", "{}"),
            ("// head\n{}", "       \n{}"),
            ("{/* a */}", "{       }"),
            ("{\"a\": 1 // one\n}", "{\"a\": 1       \n}"),
            ("{\"u\": \"http://x/*y*/\"}", "{\"u\": \"http://x/*y*/\"}"),
            ("{\"q\": \"a\\\"//b\"}", "{\"q\": \"a\\\"//b\"}"),
            ("{/* multi\nline */\"k\": 2}", "{        \n       \"k\": 2}"),
            ("{/* ** */}", "{        }"),
            ("[1,/**/2]", "[1,    2]"),
            ("\"é\" // ü", "\"é\"     "),
        ];
        for (input, want) in table {
            let got = strip_comments(input).unwrap();
            assert_eq!(&got, want, "{input:?}");
            assert_eq!(got.lines().count(), input.lines().count(), "{input:?}");
        }
        let v: serde_json::Value = serde_json::from_str(
            &strip_comments("{\n  // flows\n  \"flows\": [ /* none */ ]\n}").unwrap(),
        )
        .unwrap();
        assert_eq!(v, serde_json::json!({"flows": []}));
    }

    #[test]
    fn an_unterminated_block_comment_is_an_error_at_its_start() {
        assert_eq!(
            strip_comments("{\n  \"a\": 1, /* oops\n}"),
            Err(UnterminatedComment {
                line: 2,
                column: 11
            })
        );
        assert_eq!(
            strip_comments("/*/"),
            Err(UnterminatedComment { line: 1, column: 1 })
        );
    }

    #[test]
    fn hostile_text_never_panics_keeps_its_lines_and_strings() {
        // Random text over the characters that matter; the fuzz target (agent_config) does the
        // same through the whole reader.
        let alphabet: Vec<char> = "/*\"\\\n\r ab{}:,é".chars().collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let n = rng.usize(0..40);
            let text: String = (0..n)
                .map(|_| alphabet[rng.usize(0..alphabet.len())])
                .collect();
            if let Ok(out) = strip_comments(&text) {
                assert_eq!(out.lines().count(), text.lines().count(), "{text:?}");
                assert_eq!(out.chars().count(), text.chars().count(), "{text:?}");
                // Text without a comment start is untouched.
                if !text.contains("//") && !text.contains("/*") {
                    assert_eq!(out, text);
                }
            }
        }
    }

    #[test]
    fn what_json_forbids_stays_an_error_after_stripping() {
        for bad in ["{'a': 1}", "{\"a\": 1,}", "# yaml\n{}", "{\"a\": /}"] {
            let s = strip_comments(bad).unwrap();
            assert!(
                serde_json::from_str::<serde_json::Value>(&s).is_err(),
                "{bad:?}"
            );
        }
    }
}
