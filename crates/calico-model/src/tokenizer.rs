//! The language model's tokenizer: a `tokenizers::Tokenizer` built from a
//! GGUF file's `tokenizer.*` metadata (or read from a `tokenizer.json`),
//! with the special tokens Calico adds and chat-prompt formatting.
//!
//! From a GGUF, a `gpt2`-type vocabulary (SmolLM2, LLaMA-3, ...) becomes a
//! byte-level BPE: the token list and merges as stored, the text split the
//! way the vocabulary was trained (`tokenizer.ggml.pre`), a byte-level
//! decoder, tokens marked *control* as special added tokens and tokens
//! marked *user-defined* as plain added tokens — the tokenizer transformers
//! builds from the same file (`AutoTokenizer.from_pretrained(dir,
//! gguf_file=..)`), which the tests compare against.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::gguf::GgufFile;

/// Token types in `tokenizer.ggml.token_type` (llama.cpp's enum).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// `tokenizer.ggml.pre` values this module knows how to split for.
pub const SUPPORTED_PRE: &[&str] = &[
    "default",
    "gpt2",
    "smollm",
    "llama3",
    "llama-v3",
    "llama-bpe",
];

/// LLaMA-3's split pattern (also what llama.cpp uses for `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn msg(m: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(m.to_string())
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// How conversations are written out for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per turn, then
    /// `<|im_start|>assistant\n`; a conversation without a system turn gets
    /// `default_system` first when the template defines one (SmolLM2 does).
    ChatMl { default_system: Option<String> },
}

/// A tokenizer plus the ids and prompt format the model needs.
#[derive(Clone)]
pub struct CalicoTokenizer {
    inner: Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    chat: Option<ChatFormat>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for CalicoTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CalicoTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("chat", &self.chat)
            .finish()
    }
}

/// The word-level split: a run of word characters or one other
/// non-space character, each with the whitespace before it.
fn word_level_split() -> Split {
    Split::new(
        SplitPattern::Regex(r"\s*(?:\w+|[^\w\s])".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .expect("the word-level pattern is a valid regex")
}

/// GPT-2's byte → printable-character table (the spelling byte-level
/// vocabularies use).
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\u{FFFD}')
        };
    }
    table
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` type.
fn pre_tokenizer(pre: &str) -> candle_core::Result<PreTokenizerWrapper> {
    let byte_level = |regex: bool| ByteLevel::new(false, true, regex);
    Ok(match pre {
        // GPT-2's own pattern inside the byte-level step.
        "default" | "gpt2" => byte_level(true).into(),
        // SmolLM: every digit on its own, then GPT-2's pattern.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        "llama3" | "llama-v3" | "llama-bpe" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| msg(format!("building the llama3 split pattern: {e}")))?;
            Sequence::new(vec![split.into(), byte_level(false).into()]).into()
        }
        other => {
            return Err(msg(format!(
                "tokenizer.ggml.pre `{other}` is not supported (supported: {})",
                SUPPORTED_PRE.join(", ")
            )))
        }
    })
}

/// ChatML with the default system prompt a template writes when the
/// conversation has none (the literal after `<|im_start|>system\n` in the
/// template), if any.
fn chat_format(template: Option<&str>, has_im_start: bool) -> Option<ChatFormat> {
    match template {
        Some(t) if t.contains("<|im_start|>") => {
            // Only a template that tests for a missing system turn has one.
            let conditional = t.contains("!= 'system'") || t.contains("!= \"system\"");
            // The Jinja string may hold a real newline or an escaped one.
            let default_system = ["<|im_start|>system\n", "<|im_start|>system\\n"]
                .iter()
                .filter(|_| conditional)
                .find_map(|marker| {
                    let i = t.find(marker)?;
                    let rest = &t[i + marker.len()..];
                    let j = rest.find("<|im_end|>")?;
                    Some(rest[..j].replace("\\n", "\n"))
                });
            Some(ChatFormat::ChatMl { default_system })
        }
        None if has_im_start => Some(ChatFormat::ChatMl {
            default_system: None,
        }),
        _ => None,
    }
}

impl CalicoTokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(path: impl AsRef<Path>) -> candle_core::Result<Self> {
        Self::from_gguf_file(&GgufFile::open(path)?)
    }

    /// [`Self::from_gguf`] on an already opened file.
    pub fn from_gguf_file(file: &GgufFile) -> candle_core::Result<Self> {
        let in_file = |e: candle_core::Error| msg(format!("{}: {e}", file.path().display()));
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(in_file(msg(format!(
                "tokenizer.ggml.model `{model}` is not supported (supported: gpt2, the byte-level BPE)"
            ))));
        }
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
        let merges = file.get_str_array("tokenizer.ggml.merges")?;
        let types = match file.metadata().contains_key("tokenizer.ggml.token_type") {
            true => file.get_i64_array("tokenizer.ggml.token_type")?,
            false => vec![],
        };
        let pre = match file.metadata().contains_key("tokenizer.ggml.pre") {
            true => file.get_str("tokenizer.ggml.pre")?,
            false => "default",
        };

        // Tokens are stored in the byte-level spelling; respell any that are
        // not (as transformers does) so lookups and merges agree.
        let table = byte_chars();
        let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
        let spell = |t: &str| -> String {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.to_string()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            }
        };
        let spelled: Vec<String> = tokens.iter().map(|t| spell(t)).collect();
        let vocab: tokenizers::models::bpe::Vocab = spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        in_file(msg(format!(
                            "tokenizer.ggml.merges entry `{m}` has no space"
                        )))
                    })
            })
            .collect::<candle_core::Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| in_file(msg(format!("building the BPE model: {e}"))))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre).map_err(in_file)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        // Control tokens (`<|im_start|>`, ...) stay whole and are special;
        // user-defined ones stay whole and are ordinary text. A control
        // token spelled outside the byte alphabet is a converter mislabel
        // and is left to BPE (as transformers does).
        let kind = |i: usize| types.get(i).copied().unwrap_or(1);
        let control: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| kind(*i) == TOKEN_CONTROL && t.chars().all(|c| alphabet.contains(&c)))
            .map(|(_, t)| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        inner
            .add_special_tokens(control)
            .map_err(|e| in_file(msg(format!("adding control tokens: {e}"))))?;
        let user: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| kind(*i) == TOKEN_USER_DEFINED)
            .map(|(i, _)| AddedToken::from(spelled[i].clone(), false).normalized(false))
            .collect();
        inner
            .add_tokens(user)
            .map_err(|e| in_file(msg(format!("adding user-defined tokens: {e}"))))?;

        let opt_id = |key: &str| -> candle_core::Result<Option<u32>> {
            match file.metadata().contains_key(key) {
                true => Ok(Some(file.get_usize(key)? as u32)),
                false => Ok(None),
            }
        };
        let bos = opt_id("tokenizer.ggml.bos_token_id")?;
        let eos = opt_id("tokenizer.ggml.eos_token_id")?;
        let add_bos = match file.metadata().get("tokenizer.ggml.add_bos_token") {
            Some(v) => v.to_bool().map_err(in_file)?,
            None => false,
        };
        if let (true, Some(b)) = (add_bos, bos) {
            let tok = spelled[b as usize].clone();
            let post = TemplateProcessing::builder()
                .try_single(format!("{tok} $A"))
                .and_then(|p| p.try_pair(format!("{tok} $A {tok} $B:1")))
                .map_err(|e| in_file(msg(format!("bos template: {e}"))))?
                .special_tokens(vec![(tok, b)])
                .build()
                .map_err(|e| in_file(msg(format!("bos template: {e}"))))?;
            inner.with_post_processor(Some(post));
        }
        let chat_template = match file.metadata().contains_key("tokenizer.chat_template") {
            true => Some(file.get_str("tokenizer.chat_template")?.to_string()),
            false => None,
        };
        let has_im_start = vocab_has(&inner, "<|im_start|>");
        Ok(Self {
            chat: chat_format(chat_template.as_deref(), has_im_start),
            inner,
            bos,
            eos,
            chat_template,
        })
    }

    /// Reads a `tokenizer.json`; a `tokenizer_config.json` beside it, when
    /// present, gives the bos/eos tokens and the chat template.
    pub fn from_file(path: impl AsRef<Path>) -> candle_core::Result<Self> {
        let path = path.as_ref();
        let inner = Tokenizer::from_file(path)
            .map_err(|e| msg(format!("{}: cannot read tokenizer: {e}", path.display())))?;
        let config: serde_json::Value = match path.parent().map(|d| d.join("tokenizer_config.json"))
        {
            Some(c) if c.is_file() => {
                let text = std::fs::read_to_string(&c)
                    .map_err(|e| msg(format!("{}: {e}", c.display())))?;
                serde_json::from_str(&text).map_err(|e| msg(format!("{}: {e}", c.display())))?
            }
            _ => serde_json::Value::Null,
        };
        // `"eos_token": "</s>"` or `{"content": "</s>", ...}`.
        let token = |key: &str| -> Option<u32> {
            let v = config.get(key)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        let bos = token("bos_token");
        let eos = token("eos_token");
        let chat_template = config
            .get("chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let has_im_start = vocab_has(&inner, "<|im_start|>");
        Ok(Self {
            chat: chat_format(chat_template.as_deref(), has_im_start),
            inner,
            bos,
            eos,
            chat_template,
        })
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; `add_special` adds what the model's tokenizer
    /// adds around a sequence (a BOS token for vocabularies that ask for it;
    /// nothing for SmolLM2). Special tokens written in the text are
    /// recognised either way.
    pub fn encode(&self, text: &str, add_special: bool) -> candle_core::Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| msg(format!("tokenizing {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, leaving out special tokens when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> candle_core::Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| msg(format!("decoding {} ids: {e}", ids.len())))
    }

    /// The id of a token (vocabulary or added).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Adds special tokens (Calico's `[SEG]`, `<p>`, `</p>`, `<image>`,
    /// `<im_start>`, `<im_end>`) and returns their ids, in order. Tokens the
    /// vocabulary already has keep their ids; new ones get ids after the
    /// current vocabulary (the model's embedding must grow to match).
    pub fn add_special_tokens(&mut self, tokens: &[&str]) -> candle_core::Result<Vec<u32>> {
        let added: Vec<AddedToken> = tokens
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        self.inner
            .add_special_tokens(added)
            .map_err(|e| msg(format!("adding special tokens {tokens:?}: {e}")))?;
        tokens
            .iter()
            .map(|t| {
                self.inner
                    .token_to_id(t)
                    .ok_or_else(|| msg(format!("special token {t:?} has no id after adding it")))
            })
            .collect()
    }

    /// A word-level tokenizer for small models trained from scratch (the
    /// `tiny` preset): each word or punctuation mark, with the spaces before
    /// it, is one token; words not in `corpus` become `<unk>`. Ids: `<unk>`
    /// 0, `<s>` 1, `</s>` 2, `" "` 3, `"\n"` 4, then the pieces of `corpus`
    /// in first-seen order. Decoding concatenates the pieces, so text round-trips.
    pub fn word_level<S: AsRef<str>>(corpus: &[S]) -> candle_core::Result<Self> {
        let split = word_level_split();
        let mut vocab = serde_json::Map::new();
        // Lone whitespace is a piece wherever it precedes a special token.
        for (i, t) in ["<unk>", "<s>", "</s>", " ", "\n"].iter().enumerate() {
            vocab.insert(t.to_string(), i.into());
        }
        {
            use tokenizers::PreTokenizer;
            for text in corpus {
                let mut pre = tokenizers::PreTokenizedString::from(text.as_ref());
                split
                    .pre_tokenize(&mut pre)
                    .map_err(|e| msg(format!("splitting the corpus: {e}")))?;
                for (piece, _, _) in pre.get_splits(
                    tokenizers::OffsetReferential::Original,
                    tokenizers::OffsetType::Char,
                ) {
                    if !vocab.contains_key(piece) {
                        let id = vocab.len();
                        vocab.insert(piece.to_string(), id.into());
                    }
                }
            }
        }
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": serde_json::to_value(&split).map_err(|e| msg(e.to_string()))?,
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        let inner: Tokenizer = json
            .to_string()
            .parse()
            .map_err(|e| msg(format!("building the word-level tokenizer: {e}")))?;
        Ok(Self {
            chat: None,
            inner,
            bos: Some(1),
            eos: Some(2),
            chat_template: None,
        })
    }

    /// Adds Calico's tokens (`[SEG]`, `<p>`, `</p>`, `<image>`,
    /// `<im_start>`, `<im_end>`) and returns their ids with the tokenizer's
    /// bos/eos (`fallback_eos`, the model config's, when the tokenizer
    /// names none).
    pub fn add_calico_tokens(
        &mut self,
        fallback_eos: Option<u32>,
    ) -> candle_core::Result<crate::prompt::SpecialIds> {
        use calico_text::tokens::{IMAGE, IM_END, IM_START, P_CLOSE, P_OPEN, SEG};
        let ids = self.add_special_tokens(&[SEG, P_OPEN, P_CLOSE, IMAGE, IM_START, IM_END])?;
        let eos = self.eos.or(fallback_eos).ok_or_else(|| {
            msg("the tokenizer names no end-of-sequence token and the model config has no eos_token_id")
        })?;
        Ok(crate::prompt::SpecialIds {
            seg: ids[0],
            p_open: ids[1],
            p_close: ids[2],
            image: ids[3],
            im_start: ids[4],
            im_end: ids[5],
            eos,
            bos: self.bos,
        })
    }

    /// `tokenizer_config.json` content naming the bos/eos tokens and the
    /// chat template, so [`Self::from_file`] restores them.
    pub fn config_json(&self) -> serde_json::Value {
        let token = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let mut m = serde_json::Map::new();
        if let Some(b) = token(self.bos) {
            m.insert("bos_token".into(), b.into());
        }
        if let Some(e) = token(self.eos) {
            m.insert("eos_token".into(), e.into());
        }
        if let Some(t) = &self.chat_template {
            m.insert("chat_template".into(), t.clone().into());
        }
        serde_json::Value::Object(m)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The token that ends the model's turn (`<|im_end|>` for SmolLM2).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The chat template as stored with the model (Jinja source), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn chat_format(&self) -> Option<&ChatFormat> {
        self.chat.as_ref()
    }

    /// A conversation as the model's chat template writes it; with
    /// `add_generation_prompt` the assistant's turn is opened at the end.
    pub fn format_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> candle_core::Result<String> {
        let Some(ChatFormat::ChatMl { default_system }) = &self.chat else {
            return Err(msg(
                "this tokenizer has no chat format this crate can write (supported: ChatML)",
            ));
        };
        let mut s = String::new();
        if let (Some(sys), false) = (
            default_system,
            messages.first().is_some_and(|m| m.role == "system"),
        ) {
            s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
        for m in messages {
            s.push_str(&format!(
                "<|im_start|>{}\n{}<|im_end|>\n",
                m.role, m.content
            ));
        }
        if add_generation_prompt {
            s.push_str("<|im_start|>assistant\n");
        }
        Ok(s)
    }

    /// A single user question as a chat prompt, ready for generation.
    pub fn chat_prompt(&self, user: &str) -> candle_core::Result<String> {
        self.format_chat(&[ChatMessage::new("user", user)], true)
    }
}

fn vocab_has(t: &Tokenizer, token: &str) -> bool {
    t.token_to_id(token).is_some()
}

impl crate::prompt::TextEncoder for CalicoTokenizer {
    fn encode_plain(&self, text: &str) -> Vec<u32> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    fn decode_plain(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    fn unknown_token(&self) -> Option<u32> {
        use tokenizers::models::ModelWrapper;
        let unk = match self.inner.get_model() {
            ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
            ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
            ModelWrapper::BPE(m) => m.unk_token.clone(),
            ModelWrapper::Unigram(_) => None,
        };
        unk.and_then(|t| self.inner.token_to_id(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(set, ByteLevel::alphabet().into_iter().collect());
    }

    #[test]
    fn chatml_default_system_comes_from_the_template() {
        let t = "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nBe nice<|im_end|>\n' }}{% endif %}";
        assert_eq!(
            chat_format(Some(t), true),
            Some(ChatFormat::ChatMl {
                default_system: Some("Be nice".into())
            })
        );
        assert_eq!(
            chat_format(None, true),
            Some(ChatFormat::ChatMl {
                default_system: None
            })
        );
        assert_eq!(chat_format(Some("{{ bos_token }}"), true), None);
    }

    #[test]
    fn unknown_pre_tokenizers_are_refused() {
        let e = pre_tokenizer("no-such-pre").unwrap_err().to_string();
        assert!(e.contains("no-such-pre") && e.contains("smollm"), "{e}");
    }
}
