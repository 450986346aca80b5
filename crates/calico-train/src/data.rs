//! samples.jsonl → training examples: the images in the model's three views,
//! the tokenised conversation with labels on the answer only, and one
//! ground-truth mask per `[SEG]` at the mask decoder's resolution.
//!
//! * **Prompt.** The question gets the multi-image prefix
//!   (`calico_text::templates::multi_image_prefix`) and the model's prompt
//!   format (Vicuna v1); labels are `IGNORE_INDEX` up to the answer.
//! * **Mask targets.** SAM's low-resolution logits cover the padded SAM view
//!   (`4 × grid` pixels a side). Each target pixel takes the ground-truth
//!   value at the centre of its cell mapped back to the original image
//!   (0 in the padding), so targets and logits line up exactly as SAM's
//!   post-processing maps one onto the other.
//! * **Image swap** (the reference's augmentation): with probability ½ the
//!   images are reversed, the answer's `(IMAGEk)` tags renumbered and every
//!   mask's image index remapped; the `[SEG]` order, and so the mask order,
//!   is unchanged.
//! * **Caches.** Views of each image file and decoded targets are kept in
//!   memory (the `tiny`/`small` views are a few hundred KiB per image), so
//!   epochs after the first read nothing from disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use calico_data::samples::{read_samples, Sample};
use calico_masks::Rle;
use calico_model::calico::ImageInput;
use calico_model::config::CalicoConfig;
use calico_model::preprocess::{load_rgb, View};
use calico_model::prompt::{build, PromptFormat, PromptLayout, SpecialIds, TextEncoder};
use candle_core::{Device, Tensor};

use crate::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// One training example, ready for [`calico_model::calico::Calico::forward`].
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub task: String,
    pub layout: PromptLayout,
    pub images: Vec<ImageInput>,
    /// Per `[SEG]` in order: `(lh, lw)` 0/1 f32 target.
    pub targets: Vec<Tensor>,
}

/// The samples of one file and everything needed to turn them into
/// [`Example`]s.
pub struct Dataset {
    pub samples: Vec<Sample>,
    base: PathBuf,
    path: PathBuf,
    cfg: CalicoConfig,
    images: Mutex<HashMap<PathBuf, Arc<ImageInput>>>,
}

/// Reads a samples file (`calico data build`'s format); errors name the
/// file and line. An empty file is an error.
pub fn open(path: &Path, cfg: &CalicoConfig) -> Result<Dataset> {
    let samples = read_samples(path).map_err(|e| TrainError::Data(e.to_string()))?;
    if samples.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no samples (expected one JSON sample per line, see docs/formats.md)",
            path.display()
        )));
    }
    for s in &samples {
        if s.images.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: sample {} has no images",
                path.display(),
                s.id
            )));
        }
    }
    Ok(Dataset {
        samples,
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        path: path.to_path_buf(),
        cfg: cfg.clone(),
        images: Mutex::new(HashMap::new()),
    })
}

/// The texts a word-level tokenizer for these samples must cover: the
/// system prompt, every question with its prefix and every answer, cut at
/// Calico's special tokens (they are added tokens, and the prompt builder
/// encodes the text between them piece by piece).
pub fn corpus(samples: &[Sample], format: &PromptFormat) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |t: &str| {
        let mut pieces = vec![t.to_string()];
        for s in calico_text::tokens::ALL_SPECIAL {
            pieces = pieces
                .iter()
                .flat_map(|p| p.split(s).map(str::to_string).collect::<Vec<_>>())
                .collect();
        }
        out.extend(pieces.into_iter().filter(|p| !p.is_empty()));
    };
    push(&format!("{} USER: ASSISTANT:", format.system));
    let mut counts = std::collections::BTreeSet::new();
    for s in samples {
        counts.insert(s.images.len());
        push(&format!(
            "{} USER: {}{} ASSISTANT: {}",
            format.system,
            calico_text::templates::multi_image_prefix(s.images.len()),
            s.question,
            s.answer
        ));
    }
    out
}

/// Renumbers `(IMAGEk)` tags of `answer` for reversed images (k → n + 1 − k).
pub fn reverse_image_tags(answer: &str, n: usize) -> String {
    let prefix = calico_text::tokens::IMAGE_TAG_PREFIX;
    let mut out = String::with_capacity(answer.len());
    let mut rest = answer;
    while let Some(at) = rest.find(prefix) {
        out.push_str(&rest[..at + prefix.len()]);
        rest = &rest[at + prefix.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        match digits.parse::<usize>() {
            Ok(k) if (1..=n).contains(&k) && rest[digits.len()..].starts_with(')') => {
                out.push_str(&(n + 1 - k).to_string());
                rest = &rest[digits.len()..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Image `file` (as a sample names it) in the model's views, cached.
    pub fn image_input(&self, file: &str) -> Result<Arc<ImageInput>> {
        self.image(file)
    }

    /// The path of image `file` as a sample names it (relative to the
    /// samples file's folder).
    fn resolve(&self, file: &str) -> PathBuf {
        if Path::new(file).is_absolute() {
            PathBuf::from(file)
        } else {
            self.base.join(file)
        }
    }

    fn image(&self, file: &str) -> Result<Arc<ImageInput>> {
        let path = self.resolve(file);
        if let Some(i) = self.images.lock().ok().and_then(|m| m.get(&path).cloned()) {
            return Ok(i);
        }
        let rgb = load_rgb(&path).map_err(|e| TrainError::Data(e.to_string()))?;
        let input = Arc::new(
            ImageInput::from_image(&self.cfg, &rgb)
                .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?,
        );
        if let Ok(mut m) = self.images.lock() {
            m.insert(path, input.clone());
        }
        Ok(input)
    }

    /// The images of sample `index` in the model's views, in order; an
    /// image that does not decode, or is not of the size the sample gives,
    /// names the samples file and the sample.
    pub fn images_of(&self, index: usize) -> Result<Vec<ImageInput>> {
        let s = &self.samples[index];
        s.images
            .iter()
            .enumerate()
            .map(|(k, i)| {
                let a = self
                    .image(&i.file)
                    .map_err(|e| self.sample_error(s, format!("image {k}: {e}")))?;
                let (h, w) = a.original;
                self.check_size(s, k, (h as u32, w as u32))?;
                Ok((*a).clone())
            })
            .collect()
    }

    /// Image `k` of sample `s` is `(height, width)` = `size` on disk, which
    /// must be the size the sample gives it: masks are checked against the
    /// file, and a record that disagrees means the sample and the image
    /// came apart.
    fn check_size(&self, s: &Sample, k: usize, size: (u32, u32)) -> Result<()> {
        let im = &s.images[k];
        if (im.height, im.width) == size {
            return Ok(());
        }
        Err(self.sample_error(
            s,
            format!(
                "image {k} ({}): the sample gives width {} and height {} but the file is {}x{} \
                 (width x height)",
                self.resolve(&im.file).display(),
                im.width,
                im.height,
                size.1,
                size.0
            ),
        ))
    }

    /// The low-resolution mask side and the SAM view's side.
    pub(crate) fn mask_geometry(&self) -> Result<((usize, usize), usize)> {
        let [gh, gw] = self.cfg.sam_prompt_encoder.image_embedding_size;
        let target = match &self.cfg.views.sam {
            View::Sam(v) => v.target,
            _ => {
                return Err(TrainError::Data(
                    "views.sam must be a SAM view (ResizeLongestSide + pad)".into(),
                ))
            }
        };
        Ok(((4 * gh, 4 * gw), target))
    }

    fn sample_error(&self, s: &Sample, what: impl std::fmt::Display) -> TrainError {
        TrainError::Data(format!("{}: sample {}: {what}", self.path.display(), s.id))
    }

    /// Mask `k` of sample `s` as an RLE, checked against the sample: on one
    /// of its images, whose `(height, width)` are `dims` (in the sample's
    /// order), of that image's size, with counts covering its pixels.
    fn mask_rle(&self, s: &Sample, k: usize, dims: &[(u32, u32)]) -> Result<Rle> {
        let m = &s.masks[k];
        let Some(&(h, w)) = dims.get(m.image) else {
            return Err(self.sample_error(
                s,
                format!("mask {k} is on image {} of {}", m.image, dims.len()),
            ));
        };
        let at = |e: calico_masks::MaskError| self.sample_error(s, format!("mask {k}: {e}"));
        let rle = m.rle.to_rle().map_err(at)?;
        // The size first: a mask of another image's size says more than
        // counts that do not add up.
        if (rle.height, rle.width) != (h, w) {
            return Err(self.sample_error(
                s,
                format!(
                    "mask {k} is {}x{} but its image is {h}x{w}",
                    rle.height, rle.width
                ),
            ));
        }
        rle.check_counts().map_err(at)?;
        Ok(rle)
    }

    /// The tokenised conversation of sample `s` with `answer`, holding one
    /// `[SEG]` per mask.
    fn layout(
        &self,
        s: &Sample,
        answer: &str,
        tok: &dyn TextEncoder,
        special: &SpecialIds,
        format: &PromptFormat,
    ) -> Result<PromptLayout> {
        let n = s.images.len();
        let question = calico_text::templates::multi_image_prefix(n) + &s.question;
        let layout = build(
            &question,
            Some(answer),
            n,
            tok,
            special,
            format,
            self.cfg.llm.max_position_embeddings,
        )
        .map_err(|e| self.sample_error(s, e))?;
        let segs = layout
            .input_ids
            .iter()
            .filter(|&&t| t == special.seg)
            .count();
        if segs != s.masks.len() {
            return Err(self.sample_error(
                s,
                format!(
                    "the answer has {segs} [SEG] but the sample has {} masks",
                    s.masks.len()
                ),
            ));
        }
        Ok(layout)
    }

    /// Checks every sample before a run starts, so that a bad line fails
    /// the run at once rather than when an epoch reaches it: each image file
    /// is readable as an image (its header only; files are checked once),
    /// with the width and height the sample gives it,
    /// the conversation tokenises within the LLM's context with one `[SEG]`
    /// per mask, with `targets` (the answers are training targets) every
    /// answer word is in the tokenizer's vocabulary, and every mask is on
    /// one of its sample's images, with counts that cover exactly that
    /// image's pixels. Returns the number of distinct images and of masks
    /// checked.
    pub fn check(
        &self,
        tok: &dyn TextEncoder,
        special: &SpecialIds,
        format: &PromptFormat,
        targets: bool,
    ) -> Result<(usize, usize)> {
        let mut sizes: HashMap<PathBuf, (u32, u32)> = HashMap::new();
        let mut masks = 0;
        let mut unknown: Vec<&Sample> = Vec::new();
        for s in &self.samples {
            let mut dims = Vec::with_capacity(s.images.len());
            for (k, im) in s.images.iter().enumerate() {
                let path = self.resolve(&im.file);
                let size = match sizes.get(&path) {
                    Some(&d) => d,
                    None => {
                        let d = image_size(&path).map_err(|e| {
                            self.sample_error(s, format!("image {k} ({}): {e}", path.display()))
                        })?;
                        sizes.insert(path, d);
                        d
                    }
                };
                self.check_size(s, k, size)?;
                dims.push(size);
            }
            let layout = self.layout(s, &s.answer, tok, special, format)?;
            if let Some(unk) = tok.unknown_token().filter(|_| targets) {
                if layout.labels.contains(&(unk as i64)) {
                    unknown.push(s);
                }
            }
            for k in 0..s.masks.len() {
                self.mask_rle(s, k, &dims)?;
            }
            masks += s.masks.len();
        }
        if !unknown.is_empty() {
            return Err(self.unknown_words_error(&unknown, tok));
        }
        Ok((sizes.len(), masks))
    }

    /// The error for answers the tokenizer cannot spell: the model would
    /// learn `<unk>` where the words are. Names the first sample and up to
    /// ten of the words.
    fn unknown_words_error(&self, samples: &[&Sample], tok: &dyn TextEncoder) -> TrainError {
        let unk = tok.unknown_token();
        // A word-level piece holds the spaces before the word: a word is
        // unknown when neither form of it is spelled.
        let unknown = |text: &str| tok.encode_plain(text).iter().any(|&t| Some(t) == unk);
        let mut words: Vec<&str> = Vec::new();
        for s in samples {
            for w in s.answer.split_whitespace() {
                if words.len() < 10
                    && !words.contains(&w)
                    && unknown(w)
                    && unknown(&format!(" {w}"))
                {
                    words.push(w);
                }
            }
        }
        let list: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
        self.sample_error(
            samples[0],
            format!(
                "the answer has words outside the tokenizer's vocabulary ({} sample(s) in all; \
                 words: {}), which the model would learn as `<unk>`; a word-level tokenizer (the \
                 `tiny` presets') knows only the words of the data it was built from: train \
                 without --weights to build one from this data",
                samples.len(),
                list.join(", ")
            ),
        )
    }

    /// Example `index`, with its images reversed when `swap`.
    pub fn example(
        &self,
        index: usize,
        swap: bool,
        tok: &dyn TextEncoder,
        special: &SpecialIds,
        format: &PromptFormat,
    ) -> Result<Example> {
        let s = &self.samples[index];
        let n = s.images.len();
        let mut images = self.images_of(index)?;
        // Sizes in the sample's order, before any swap.
        let dims: Vec<(u32, u32)> = images
            .iter()
            .map(|i| (i.original.0 as u32, i.original.1 as u32))
            .collect();
        let mut answer = s.answer.clone();
        let remap = |k: usize| if swap { n - 1 - k } else { k };
        if swap {
            images.reverse();
            answer = reverse_image_tags(&answer, n);
        }
        let layout = self.layout(s, &answer, tok, special, format)?;
        let ((lh, lw), target) = self.mask_geometry()?;
        let mut targets = Vec::with_capacity(s.masks.len());
        for (k, m) in s.masks.iter().enumerate() {
            let decoded = self
                .mask_rle(s, k, &dims)?
                .decode()
                .map_err(|e| self.sample_error(s, format!("mask {k}: {e}")))?;
            targets.push(low_res_target(
                &decoded,
                images[remap(m.image)].sam_resized,
                target,
                (lh, lw),
            )?);
        }
        Ok(Example {
            id: s.id.clone(),
            task: s.task.clone(),
            layout,
            images,
            targets,
        })
    }
}

/// `(height, width)` of an image file, from its header.
fn image_size(path: &Path) -> std::result::Result<(u32, u32), String> {
    let (w, h) = calico_data::sources::image_dimensions(path)?;
    if w == 0 || h == 0 {
        return Err(format!("image has zero size ({w}x{h})"));
    }
    Ok((h, w))
}

/// The `(lh, lw)` target of a mask for SAM's low-resolution logits (see the
/// module docs).
pub fn low_res_target(
    mask: &calico_masks::Mask,
    resized: (usize, usize),
    view: usize,
    (lh, lw): (usize, usize),
) -> Result<Tensor> {
    let (oh, ow) = (mask.height() as usize, mask.width() as usize);
    let mut v = vec![0f32; lh * lw];
    for y in 0..lh {
        let vy = (y as f64 + 0.5) * view as f64 / lh as f64;
        if vy >= resized.0 as f64 {
            continue;
        }
        let oy = ((vy * oh as f64 / resized.0 as f64) as usize).min(oh - 1);
        for x in 0..lw {
            let vx = (x as f64 + 0.5) * view as f64 / lw as f64;
            if vx >= resized.1 as f64 {
                continue;
            }
            let ox = ((vx * ow as f64 / resized.1 as f64) as usize).min(ow - 1);
            if mask.get(oy as u32, ox as u32) {
                v[y * lw + x] = 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(v, (lh, lw), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_reverse() {
        let a =
            "The images show <p> a chair </p> [SEG] (IMAGE1) and <p> a stool </p> [SEG] (IMAGE2).";
        let r = reverse_image_tags(a, 2);
        assert_eq!(
            r,
            "The images show <p> a chair </p> [SEG] (IMAGE2) and <p> a stool </p> [SEG] (IMAGE1)."
        );
        assert_eq!(reverse_image_tags(&r, 2), a);
        assert_eq!(
            reverse_image_tags("(IMAGE1) (IMAGE3)", 3),
            "(IMAGE3) (IMAGE1)"
        );
        assert_eq!(
            reverse_image_tags("(IMAGE9) (IMAGEx", 2),
            "(IMAGE9) (IMAGEx"
        );
    }

    #[test]
    fn targets_follow_the_sam_view() {
        // A 4x8 mask whose right half is set, in a view of side 8 where the
        // image is resized to 4x8 (bottom half padding).
        let m = calico_masks::Mask::from_fn(4, 8, |_, x| x >= 4);
        let t = low_res_target(&m, (4, 8), 8, (4, 4)).unwrap();
        let v: Vec<Vec<f32>> = t.to_vec2().unwrap();
        assert_eq!(v[0], [0.0, 0.0, 1.0, 1.0]);
        assert_eq!(v[1], [0.0, 0.0, 1.0, 1.0]);
        assert_eq!(v[2], [0.0; 4], "padding rows are background");
        assert_eq!(v[3], [0.0; 4]);
    }
}
