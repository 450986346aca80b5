//! Loading model directories: clear errors for missing files and tensors,
//! and tensor names with or without a `bert.` prefix.
//!
//! The tests that need the real model fetch it with
//! `bash tools/reference/fetch_models.sh` when it is missing, and fail
//! without it unless `CALICO_SKIP_MODEL_TESTS=1`.

mod common;

use common::model_dir;

use calico_eval::embed::{Device, EmbedError, SentenceEmbedder};
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A fresh empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "calico-embed-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the model's configuration and tokenizer files into `to`.
fn copy_configs(from: &Path, to: &Path) {
    for f in ["config.json", "tokenizer.json", "sentence_bert_config.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn load_err(dir: &Path) -> EmbedError {
    match SentenceEmbedder::load(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

fn original_tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn missing_directory_says_how_to_fetch() {
    let e = load_err(Path::new("/nonexistent/calico/all-MiniLM-L6-v2"));
    assert!(matches!(e, EmbedError::MissingDir { .. }), "{e:?}");
    assert!(e.to_string().contains("fetch_models.sh"), "{e}");
}

#[test]
fn missing_files_are_named() {
    let t = TempDir::new("files");
    let e = load_err(&t.0);
    assert!(e.to_string().contains("config.json"), "{e}");
    std::fs::write(t.0.join("config.json"), "{}").unwrap();
    let e = load_err(&t.0);
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    std::fs::write(t.0.join("model.safetensors"), "").unwrap();
    let e = load_err(&t.0);
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    std::fs::write(t.0.join("tokenizer.json"), "{}").unwrap();
    // config.json "{}" lacks the BERT fields.
    let e = load_err(&t.0);
    assert!(matches!(e, EmbedError::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("config.json"), "{e}");
}

#[test]
fn non_bert_models_are_rejected() {
    let t = TempDir::new("mpnet");
    std::fs::write(
        t.0.join("config.json"),
        r#"{"model_type": "mpnet", "hidden_size": 768}"#,
    )
    .unwrap();
    std::fs::write(t.0.join("model.safetensors"), "").unwrap();
    std::fs::write(t.0.join("tokenizer.json"), "{}").unwrap();
    let e = load_err(&t.0);
    assert!(e.to_string().contains("mpnet"), "{e}");
}

#[test]
fn bert_prefixed_names_load_the_same_model() {
    let Some(dir) = model_dir() else { return };
    let t = TempDir::new("prefixed");
    copy_configs(&dir, &t.0);
    let mut renamed: HashMap<String, Tensor> = original_tensors(&dir)
        .into_iter()
        .map(|(k, v)| (format!("bert.{k}"), v))
        .collect();
    // A head the encoder does not use is ignored.
    renamed.insert(
        "cls.predictions.bias".into(),
        Tensor::zeros(30522, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&renamed, t.0.join("model.safetensors")).unwrap();

    let texts = ["seat cushion", "chair's seat", "café"];
    let a = SentenceEmbedder::load(&dir, &Device::Cpu)
        .unwrap()
        .embed(&texts)
        .unwrap();
    let b = SentenceEmbedder::load(&t.0, &Device::Cpu)
        .unwrap()
        .embed(&texts)
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let Some(dir) = model_dir() else { return };
    let t = TempDir::new("tensors");
    copy_configs(&dir, &t.0);
    let mut tensors = original_tensors(&dir);

    let key = "encoder.layer.3.attention.self.key.weight";
    let kept = tensors.remove(key).expect("MiniLM has that tensor");
    candle_core::safetensors::save(&tensors, t.0.join("model.safetensors")).unwrap();
    let e = load_err(&t.0);
    assert!(matches!(e, EmbedError::MissingTensors { .. }), "{e:?}");
    assert!(e.to_string().contains(key), "{e}");

    tensors.insert(key.into(), kept.narrow(0, 0, 10).unwrap());
    candle_core::safetensors::save(&tensors, t.0.join("model.safetensors")).unwrap();
    let e = load_err(&t.0);
    assert!(matches!(e, EmbedError::TensorShape { .. }), "{e:?}");
    assert!(e.to_string().contains(key), "{e}");
}

#[test]
fn garbage_weights_name_the_file() {
    let Some(dir) = model_dir() else { return };
    let t = TempDir::new("garbage");
    copy_configs(&dir, &t.0);
    std::fs::write(t.0.join("model.safetensors"), b"not a safetensors file").unwrap();
    let e = load_err(&t.0);
    assert!(matches!(e, EmbedError::Weights { .. }), "{e:?}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}
