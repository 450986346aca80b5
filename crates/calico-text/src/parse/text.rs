//! Whitespace-collapsing text accumulation for captions and phrases.

/// Punctuation that never has a space before it in a caption.
const CLOSING_PUNCTUATION: [char; 6] = ['.', ',', ';', ':', '!', '?'];

/// Builds text from characters and word breaks, so that the result has no
/// leading or trailing whitespace and no whitespace runs.
#[derive(Debug, Default)]
pub(super) struct TextBuilder {
    out: String,
    pending_space: bool,
    /// Drop a pending space before [`CLOSING_PUNCTUATION`].
    tight_punctuation: bool,
}

impl TextBuilder {
    /// A builder for captions: spaces before closing punctuation are dropped.
    pub fn caption() -> Self {
        TextBuilder {
            tight_punctuation: true,
            ..Self::default()
        }
    }

    /// A builder for phrases: words are kept as written.
    pub fn phrase() -> Self {
        Self::default()
    }

    /// Records a word break (whitespace or a removed token).
    pub fn space(&mut self) {
        self.pending_space = true;
    }

    /// Appends one non-whitespace character.
    pub fn push(&mut self, c: char) {
        if self.pending_space
            && !self.out.is_empty()
            && !(self.tight_punctuation && CLOSING_PUNCTUATION.contains(&c))
        {
            self.out.push(' ');
        }
        self.pending_space = false;
        self.out.push(c);
    }

    /// The accumulated text.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TextBuilder {
        fn push_str(&mut self, s: &str) {
            s.chars().for_each(|c| self.push(c));
        }
    }

    #[test]
    fn collapses_and_trims() {
        let mut b = TextBuilder::phrase();
        b.space();
        b.push_str("a");
        b.space();
        b.space();
        b.push_str("b.");
        b.space();
        b.push('.');
        b.space();
        assert_eq!(b.finish(), "a b. .");
    }

    #[test]
    fn captions_drop_space_before_punctuation() {
        let mut b = TextBuilder::caption();
        b.push_str("chair");
        b.space();
        b.push('.');
        b.space();
        b.push_str("x");
        b.space();
        b.push(',');
        assert_eq!(b.finish(), "chair. x,");
    }
}
