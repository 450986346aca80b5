//! Small English helpers used to build answers: articles, lists,
//! capitalisation and template filling.

use crate::tokens::P_OPEN;

/// Prefixes `word` with an article.
///
/// With `definite` the article is always `"the"`. Otherwise it is `"an"` when
/// the word's first letter is a vowel letter (`a`, `e`, `i`, `o`, `u`, either
/// case) and `"a"` in every other case; the rule looks at spelling only, so
/// `"hour"` gets `"a"` and `"unicorn"` gets `"an"`. Surrounding whitespace of
/// `word` is dropped; an empty word yields the bare article.
///
/// ```
/// use calico_text::english::add_article;
/// assert_eq!(add_article("ottoman", false), "an ottoman");
/// assert_eq!(add_article("chair", false), "a chair");
/// assert_eq!(add_article("leg", true), "the leg");
/// ```
pub fn add_article(word: &str, definite: bool) -> String {
    let word = word.trim();
    let article = if definite {
        "the"
    } else if word
        .chars()
        .next()
        .is_some_and(|c| matches!(c.to_ascii_lowercase(), 'a' | 'e' | 'i' | 'o' | 'u'))
    {
        "an"
    } else {
        "a"
    };
    if word.is_empty() {
        article.to_string()
    } else {
        format!("{article} {word}")
    }
}

/// Removes one leading article (`a`, `an` or `the`, any case) from a phrase.
///
/// This is the inverse of [`add_article`] for phrases produced by this
/// crate. A phrase that is only an article, or has none, is returned as is.
///
/// ```
/// use calico_text::english::strip_article;
/// assert_eq!(strip_article("The chair's seat"), "chair's seat");
/// assert_eq!(strip_article("an ottoman"), "ottoman");
/// assert_eq!(strip_article("theatre"), "theatre");
/// ```
pub fn strip_article(phrase: &str) -> &str {
    let Some((first, rest)) = phrase.split_once(' ') else {
        return phrase;
    };
    let is_article = ["a", "an", "the"]
        .iter()
        .any(|a| first.eq_ignore_ascii_case(a));
    if is_article && !rest.is_empty() {
        rest
    } else {
        phrase
    }
}

/// Joins items as an English list: `"x"`, `"x and y"`, `"x, y, and z"`
/// (with a serial comma). An empty slice gives an empty string.
///
/// ```
/// use calico_text::english::write_list;
/// assert_eq!(write_list(&["x", "y", "z"]), "x, y, and z");
/// assert_eq!(write_list(&["x".to_string(), "y".to_string()]), "x and y");
/// ```
pub fn write_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_string(),
        [a, b] => format!("{} and {}", a.as_ref(), b.as_ref()),
        [init @ .., last] => {
            let mut out = String::new();
            for item in init {
                out.push_str(item.as_ref());
                out.push_str(", ");
            }
            out.push_str("and ");
            out.push_str(last.as_ref());
            out
        }
    }
}

/// Upper-cases the first letter of a sentence fragment.
///
/// Leading whitespace and a leading `<p>` tag are kept intact, so the first
/// word *inside* a grounded phrase is capitalised rather than the tag:
///
/// ```
/// use calico_text::english::capitalise_first;
/// assert_eq!(capitalise_first("<p> the chair </p>"), "<p> The chair </p>");
/// assert_eq!(capitalise_first("both images"), "Both images");
/// ```
///
/// Only the very first character after that prefix is considered; if it is
/// not lower case the text is returned unchanged.
pub fn capitalise_first(text: &str) -> String {
    let trimmed = text.trim_start();
    let mut skip = text.len() - trimmed.len();
    if let Some(after_tag) = trimmed.strip_prefix(P_OPEN) {
        let after_space = after_tag.trim_start();
        skip += P_OPEN.len() + (after_tag.len() - after_space.len());
    }
    let (head, rest) = text.split_at(skip);
    let mut chars = rest.chars();
    match chars.next() {
        Some(c) if c.is_lowercase() => {
            let mut out = String::with_capacity(text.len() + 2);
            out.push_str(head);
            out.extend(c.to_uppercase());
            out.push_str(chars.as_str());
            out
        }
        _ => text.to_string(),
    }
}

/// Fills `{name}` placeholders in `template` using `lookup`.
///
/// `lookup` receives each placeholder name in order of appearance and
/// returns its replacement, or `None` to keep the placeholder literally.
/// A replacement that starts a sentence (it is at the start of the output,
/// or only whitespace separates it from a preceding `.`, `!` or `?`) is
/// passed through [`capitalise_first`]. Replacement values are inserted
/// verbatim and never scanned for further placeholders.
///
/// ```
/// use calico_text::english::fill;
/// let s = fill("{x} is here. {x} again, {x}.", |k| (k == "x").then(|| "it".to_string()));
/// assert_eq!(s, "It is here. It again, it.");
/// ```
pub fn fill(template: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            rest = &rest[open..];
            break;
        };
        let key = &after[..close];
        match lookup(key) {
            Some(value) if starts_sentence(&out) => out.push_str(&capitalise_first(&value)),
            Some(value) => out.push_str(&value),
            None => {
                out.push('{');
                out.push_str(key);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether text appended to `out` would begin a new sentence.
fn starts_sentence(out: &str) -> bool {
    let t = out.trim_end();
    t.is_empty() || t.ends_with(['.', '!', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn articles_follow_the_first_letter() {
        assert_eq!(add_article("apple", false), "an apple");
        assert_eq!(add_article("Egg", false), "an Egg");
        assert_eq!(add_article("igloo", false), "an igloo");
        assert_eq!(add_article("oven", false), "an oven");
        assert_eq!(add_article("umbrella", false), "an umbrella");
        assert_eq!(add_article("dog", false), "a dog");
        assert_eq!(add_article("3-seater", false), "a 3-seater");
        assert_eq!(add_article("apple", true), "the apple");
        assert_eq!(add_article("  chair  ", false), "a chair");
        assert_eq!(add_article("", false), "a");
        assert_eq!(add_article("", true), "the");
    }

    #[test]
    fn strip_article_inverts_add_article() {
        for w in [
            "chair",
            "ottoman",
            "the leg",
            "a",
            "an",
            "chair's seat",
            "x y",
        ] {
            assert_eq!(strip_article(&add_article(w, true)), w);
            assert_eq!(strip_article(&add_article(w, false)), w);
            assert_eq!(strip_article(&capitalise_first(&add_article(w, false))), w);
        }
        assert_eq!(strip_article("the"), "the");
        assert_eq!(strip_article("chair"), "chair");
        assert_eq!(strip_article("The "), "The ");
    }

    #[test]
    fn lists_use_a_serial_comma() {
        let none: [&str; 0] = [];
        assert_eq!(write_list(&none), "");
        assert_eq!(write_list(&["x"]), "x");
        assert_eq!(write_list(&["x", "y"]), "x and y");
        assert_eq!(write_list(&["x", "y", "z"]), "x, y, and z");
        assert_eq!(write_list(&["w", "x", "y", "z"]), "w, x, y, and z");
    }

    #[test]
    fn capitalisation_skips_the_phrase_tag() {
        assert_eq!(capitalise_first("<p> the chair </p>"), "<p> The chair </p>");
        assert_eq!(capitalise_first("<p>an apple</p>"), "<p>An apple</p>");
        assert_eq!(capitalise_first("  both"), "  Both");
        assert_eq!(capitalise_first("Already"), "Already");
        assert_eq!(capitalise_first("3 dogs"), "3 dogs");
        assert_eq!(capitalise_first(""), "");
        assert_eq!(capitalise_first("<p>"), "<p>");
        assert_eq!(capitalise_first("ßig"), "SSig");
    }

    #[test]
    fn fill_capitalises_only_at_sentence_starts() {
        let lookup = |k: &str| match k {
            "a" => Some("<p> a dog </p>".to_string()),
            "n" => Some("both".to_string()),
            _ => None,
        };
        assert_eq!(fill("{a} runs.", lookup), "<p> A dog </p> runs.");
        assert_eq!(fill("I see {a}.", lookup), "I see <p> a dog </p>.");
        assert_eq!(
            fill("{n} images! {n} of them", lookup),
            "Both images! Both of them"
        );
        assert_eq!(fill("keep {unknown} and {", lookup), "keep {unknown} and {");
        assert_eq!(fill("no placeholders", lookup), "no placeholders");
    }

    #[test]
    fn fill_does_not_rescan_values() {
        let s = fill("{a}", |_| Some("{a}".to_string()));
        assert_eq!(s, "{a}");
    }
}
