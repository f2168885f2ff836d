//! Physical lines to logical instruction lines: parser directives, comments and line
//! continuations, as BuildKit's `parser.Parse` does them.

use super::words::{heredoc_words, is_arg_space};
use super::{Heredoc, ParseError};

/// One instruction's text with its continuations joined, and the line it starts on.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LogicalLine {
    pub line: usize,
    pub text: String,
    /// The heredocs a RUN, COPY or ADD line opens, with their bodies (the physical lines
    /// after the instruction, up to each delimiter).
    pub heredocs: Vec<Heredoc>,
}

/// Splits `text` into logical lines; also returns the escape character the directives chose.
pub(super) fn logical_lines(text: &str) -> Result<(char, Vec<LogicalLine>), ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Go's line scanner: split on `\n`, drop trailing `\r`s.
    let physical: Vec<&str> = text
        .split('\n')
        .map(|l| l.trim_end_matches(['\r', '\n']))
        .collect();
    let mut directives = Directives {
        done: false,
        seen: Vec::new(),
        escape: '\\',
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < physical.len() {
        let start = i + 1;
        let first = physical[i].trim_start();
        directives.check(first).map_err(|message| ParseError {
            line: start,
            message,
        })?;
        i += 1;
        let first = if is_comment(first) { "" } else { first };
        let (mut text, mut continues) = trim_continuation(first, directives.escape);
        if !continues && text.is_empty() {
            continue;
        }
        while continues && i < physical.len() {
            // Continuation lines keep their leading whitespace; comment lines and blank lines
            // inside a continuation are dropped without ending it (Docker warns about blanks).
            let raw = physical[i];
            directives.check(raw).map_err(|message| ParseError {
                line: i + 1,
                message,
            })?;
            i += 1;
            if is_comment(raw) || raw.trim_start().is_empty() {
                continue;
            }
            let (more, again) = trim_continuation(raw, directives.escape);
            text.push_str(&more);
            continues = again;
        }
        // A lone escape character continued into nothing leaves no instruction.
        if !text.trim().is_empty() {
            let heredocs = read_heredocs(&text, &physical, &mut i, start)?;
            out.push(LogicalLine {
                line: start,
                text,
                heredocs,
            });
        }
    }
    Ok((directives.escape, out))
}

/// The bodies of the heredocs `text` opens (RUN, COPY and ADD only, as in BuildKit), read
/// from `physical[*i..]`: each runs up to a line that is its delimiter alone (tabs stripped
/// first for `<<-`). Body lines are taken verbatim: no comments, no continuations.
fn read_heredocs(
    text: &str,
    physical: &[&str],
    i: &mut usize,
    start: usize,
) -> Result<Vec<Heredoc>, ParseError> {
    let trimmed = text.trim_start();
    let (word, rest) = trimmed.split_once(is_arg_space).unwrap_or((trimmed, ""));
    if !["run", "copy", "add"].contains(&word.to_ascii_lowercase().as_str()) {
        return Ok(Vec::new());
    }
    let mut heredocs = Vec::new();
    for opened in heredoc_words(rest) {
        let opened = opened.map_err(|message| ParseError {
            line: start,
            message,
        })?;
        let mut content = String::new();
        loop {
            let Some(raw) = physical.get(*i) else {
                return Err(ParseError {
                    line: start,
                    message: format!(
                        "unterminated heredoc {}: no line {:?} ends it",
                        opened.word, opened.name
                    ),
                });
            };
            *i += 1;
            let candidate = if opened.chomp {
                raw.trim_start_matches('\t')
            } else {
                raw
            };
            if candidate == opened.name {
                break;
            }
            content.push_str(raw);
            content.push('\n');
        }
        heredocs.push(Heredoc {
            word: opened.word,
            name: opened.name,
            content,
            expand: opened.expand,
            chomp: opened.chomp,
        });
    }
    Ok(heredocs)
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Strips a trailing escape character (optionally followed by blanks); the flag says whether
/// the line continues. `RUN echo \\` continues too: Docker looks only at the last one.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    match line.trim_end_matches([' ', '\t']).strip_suffix(escape) {
        Some(rest) => (rest.to_string(), true),
        None => (line.to_string(), false),
    }
}

/// Parser directives are only recognised at the very top: the first line that is not a known
/// directive (an instruction, a plain comment, an unknown directive, even a blank line) ends
/// them, and later `# escape=` lines are ordinary comments.
struct Directives {
    done: bool,
    seen: Vec<String>,
    escape: char,
}

impl Directives {
    fn check(&mut self, line: &str) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = parse_directive(line) else {
            self.done = true;
            return Ok(());
        };
        if !["syntax", "escape", "check"].contains(&name.as_str()) {
            self.done = true;
            return Ok(());
        }
        if self.seen.contains(&name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        if name == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(format!(
                        "invalid escape token '{value}' does not match ` or \\"
                    ));
                }
            };
        }
        self.seen.push(name);
        Ok(())
    }
}

/// `#\s*name\s*=\s*value\s*`, name `[a-zA-Z][a-zA-Z0-9]*` (lowercased), value non-empty.
fn parse_directive(line: &str) -> Option<(String, &str)> {
    let rest = line.strip_prefix('#')?.trim_start_matches(is_go_space);
    let name_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[name_len..]
        .trim_start_matches(is_go_space)
        .strip_prefix('=')?;
    let value = value.trim_matches(is_go_space);
    (!value.is_empty()).then(|| (name.to_ascii_lowercase(), value))
}

/// RE2's `\s`.
fn is_go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> (char, Vec<(usize, String)>) {
        let (escape, lines) = logical_lines(text).unwrap();
        (
            escape,
            lines.into_iter().map(|l| (l.line, l.text)).collect(),
        )
    }

    /// A logical line, and its heredocs as (name, content, expand, chomp).
    type Line<'a> = (usize, &'a str, Vec<(&'a str, &'a str, bool, bool)>);

    #[test]
    fn heredoc_bodies_are_read_verbatim_up_to_their_delimiters() {
        let text = "FROM a\nRUN <<EOF\n# not a comment \\\n\techo $X\nEOF\nCOPY <<-A 2<<\"B\" /d/\n\tone\n\tA\ntwo\nB\nRUN x";
        let (_, lines) = logical_lines(text).unwrap();
        let got: Vec<Line> = lines
            .iter()
            .map(|l| {
                (
                    l.line,
                    l.text.as_str(),
                    l.heredocs
                        .iter()
                        .map(|h| (h.name.as_str(), h.content.as_str(), h.expand, h.chomp))
                        .collect(),
                )
            })
            .collect();
        let want: Vec<Line> = vec![
            (1, "FROM a", vec![]),
            (
                2,
                "RUN <<EOF",
                vec![("EOF", "# not a comment \\\n\techo $X\n", true, false)],
            ),
            (
                6,
                "COPY <<-A 2<<\"B\" /d/",
                vec![("A", "\tone\n", true, true), ("B", "two\n", false, false)],
            ),
            (11, "RUN x", vec![]),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn heredoc_errors_name_the_instruction_line() {
        let err = logical_lines("FROM a\nRUN cat <<EOF\nline\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("unterminated heredoc <<EOF"), "{err}");
        let err = logical_lines("FROM a\nCOPY <<../etc/x /\nx\n../etc/x\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("invalid heredoc delimiter"), "{err}");
        // Not RUN, COPY or ADD: no heredoc.
        let (_, lines) = logical_lines("FROM a\nCMD cat <<EOF\nEOF").unwrap();
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn continuations_comments_and_directives() {
        // (file, escape chosen, logical lines)
        type Case<'a> = (&'a str, char, &'a [(usize, &'a str)]);
        let cases: &[Case] = &[
            ("FROM a\nRUN b", '\\', &[(1, "FROM a"), (2, "RUN b")]),
            ("  FROM a  \r\n\r\n# c\n", '\\', &[(1, "FROM a  ")]),
            ("RUN a \\\n  b", '\\', &[(1, "RUN a   b")]),
            ("RUN a \\  \t\n  b", '\\', &[(1, "RUN a   b")]),
            (
                "RUN a\\\n# skipped\n  # skipped\n\n   \nb",
                '\\',
                &[(1, "RUN ab")],
            ),
            ("RUN a \\\\\nb", '\\', &[(1, "RUN a \\b")]),
            ("RUN a \\\n", '\\', &[(1, "RUN a ")]),
            (
                "RUN a # not a comment",
                '\\',
                &[(1, "RUN a # not a comment")],
            ),
            ("\u{feff}FROM a", '\\', &[(1, "FROM a")]),
            ("# escape=`\nRUN a `\nb \\", '`', &[(2, "RUN a b \\")]),
            ("#ESCAPE = ` \nRUN a `\nb", '`', &[(2, "RUN a b")]),
            ("# syntax=x\n# escape=`\nRUN a `\nb", '`', &[(3, "RUN a b")]),
            // A blank line, a plain comment or an unknown directive ends the directives.
            ("\n# escape=`\nRUN a `", '\\', &[(3, "RUN a `")]),
            ("# hi\n# escape=`\nRUN a `", '\\', &[(3, "RUN a `")]),
            ("# foo=bar\n# escape=`\nRUN a `", '\\', &[(3, "RUN a `")]),
            ("FROM a\n# escape=`", '\\', &[(1, "FROM a")]),
        ];
        for &(text, escape, want) in cases {
            let want: Vec<(usize, String)> =
                want.iter().map(|&(l, t)| (l, t.to_string())).collect();
            assert_eq!(lines(text), (escape, want), "{text:?}");
        }
    }

    #[test]
    fn directive_errors() {
        let cases = [
            (
                "# escape=x\nFROM a",
                1,
                "invalid escape token 'x' does not match ` or \\",
            ),
            (
                "# escape=`\n# escape=\\\n",
                2,
                "only one escape parser directive can be used",
            ),
            (
                "# syntax=a\n#syntax=b",
                2,
                "only one syntax parser directive can be used",
            ),
        ];
        for (text, line, message) in cases {
            let want = ParseError {
                line,
                message: message.to_string(),
            };
            assert_eq!(logical_lines(text), Err(want), "{text:?}");
        }
    }
}
