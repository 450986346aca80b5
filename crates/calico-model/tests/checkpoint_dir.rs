//! Loading Hugging Face checkpoint directories (single file, sharded with an
//! index, PyTorch `.bin`), merging several checkpoints under prefixes, and
//! the load report's missing / grouped / per-part views.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use calico_model::{Checkpoint, LoadError};
use candle_core::{DType, Device, Tensor};

/// A fresh empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "calico-ckptdir-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn t(shape: &[usize], v: f32) -> Tensor {
    Tensor::full(v, shape, &Device::Cpu).unwrap()
}

fn save(path: &Path, tensors: &[(&str, Tensor)]) {
    let m: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&m, path).unwrap();
}

fn write_index(dir: &Path, file: &str, map: &[(&str, &str)]) {
    let wm: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(t, s)| (t.to_string(), serde_json::Value::String(s.to_string())))
        .collect();
    let j = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": wm});
    std::fs::write(dir.join(file), serde_json::to_string_pretty(&j).unwrap()).unwrap();
}

fn err_text(r: Result<Checkpoint, LoadError>) -> String {
    match r {
        Ok(c) => panic!("expected an error, loaded {:?}", c.names()),
        Err(e) => e.to_string(),
    }
}

/// Two shards of a tiny "model": a linear layer and a norm.
fn write_sharded(dir: &Path) {
    save(
        &dir.join("model-00001-of-00002.safetensors"),
        &[
            ("proj.weight", t(&[2, 3], 1.0)),
            ("proj.bias", t(&[2], 2.0)),
        ],
    );
    save(
        &dir.join("model-00002-of-00002.safetensors"),
        &[("norm.weight", t(&[2], 3.0)), ("norm.bias", t(&[2], 4.0))],
    );
}

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

#[test]
fn single_safetensors_file() {
    let d = TempDir::new("single");
    save(
        &d.path().join("model.safetensors"),
        &[
            ("proj.weight", t(&[2, 3], 1.0)),
            ("proj.bias", t(&[2], 2.0)),
        ],
    );
    std::fs::write(d.path().join("config.json"), "{}").unwrap();
    let c = Checkpoint::from_dir(d.path()).unwrap();
    assert_eq!(c.names(), vec!["proj.bias", "proj.weight"]);
    let vb = c.var_builder(DType::F32, &Device::Cpu);
    calico_nn::Linear::new(3, 2, true, vb.pp("proj")).unwrap();
    let r = c.report();
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.loaded.len(), 2);
    assert!(Checkpoint::adapter_from_dir(d.path()).unwrap().is_none());
}

#[test]
fn sharded_safetensors_with_index() {
    let d = TempDir::new("sharded");
    write_sharded(d.path());
    write_index(
        d.path(),
        "model.safetensors.index.json",
        &[
            ("proj.weight", SHARD1),
            ("proj.bias", SHARD1),
            ("norm.weight", SHARD2),
            ("norm.bias", SHARD2),
        ],
    );
    let c = Checkpoint::from_dir(d.path()).unwrap();
    assert!(c.origin().contains("2 shards"), "{}", c.origin());
    let vb = c.var_builder(DType::F32, &Device::Cpu);
    calico_nn::Linear::new(3, 2, true, vb.pp("proj")).unwrap();
    let norm = vb.pp("norm").get(2, "bias").unwrap();
    assert_eq!(norm.to_vec1::<f32>().unwrap(), vec![4.0, 4.0]);
    let r = c.report();
    assert_eq!(r.unexpected, vec!["norm.weight"]);
    assert!(r.missing.is_empty());
    let text = r.to_string();
    assert!(
        text.contains("warning: 1 tensors in the checkpoint were not used: norm.weight"),
        "{text}"
    );
    assert!(text.contains("  proj: 2 loaded"), "{text}");
    assert!(text.contains("  norm: 1 loaded, 1 unused"), "{text}");
}

#[test]
fn index_naming_a_missing_shard_is_an_error_naming_index_shard_and_tensor() {
    let d = TempDir::new("noshard");
    write_sharded(d.path());
    write_index(
        d.path(),
        "model.safetensors.index.json",
        &[
            ("proj.weight", SHARD1),
            ("proj.bias", SHARD1),
            ("norm.weight", "model-00003-of-00002.safetensors"),
        ],
    );
    let e = err_text(Checkpoint::from_dir(d.path()));
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("model-00003-of-00002.safetensors")
            && e.contains("`norm.weight`")
            && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn index_listing_a_tensor_absent_from_its_shard_is_an_error() {
    let d = TempDir::new("badtensor");
    write_sharded(d.path());
    write_index(
        d.path(),
        "model.safetensors.index.json",
        &[
            ("proj.weight", SHARD1),
            // really in shard 2
            ("norm.bias", SHARD1),
        ],
    );
    let e = err_text(Checkpoint::from_dir(d.path()));
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains(SHARD1)
            && e.contains("`norm.bias`")
            && e.contains("does not contain it"),
        "{e}"
    );
}

#[test]
fn index_without_weight_map_is_an_error() {
    let d = TempDir::new("nowm");
    write_sharded(d.path());
    std::fs::write(d.path().join("model.safetensors.index.json"), "{}").unwrap();
    let e = err_text(Checkpoint::from_dir(d.path()));
    assert!(e.contains("weight_map"), "{e}");
}

#[test]
fn empty_or_unloadable_directories_say_what_they_contain() {
    let d = TempDir::new("empty");
    let e = err_text(Checkpoint::from_dir(d.path()));
    assert!(
        e.contains("no model.safetensors") && e.contains("empty"),
        "{e}"
    );

    std::fs::write(d.path().join("config.json"), "{}").unwrap();
    std::fs::write(d.path().join("tokenizer.json"), "{}").unwrap();
    let e = err_text(Checkpoint::from_dir(d.path()));
    assert!(
        e.contains("it contains: config.json, tokenizer.json"),
        "{e}"
    );

    std::fs::write(d.path().join("smollm2.Q8_0.gguf"), b"GGUF").unwrap();
    let e = err_text(Checkpoint::from_dir(d.path()));
    assert!(
        e.contains("smollm2.Q8_0.gguf") && e.contains("calico_model::gguf::load_llama_gguf"),
        "{e}"
    );

    let e = err_text(Checkpoint::from_dir(d.path().join("nope")));
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn peft_adapter_is_loaded_separately() {
    let d = TempDir::new("peft");
    let a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    save(
        &d.path().join("adapter_model.safetensors"),
        &[(a, t(&[4, 8], 0.5))],
    );
    std::fs::write(d.path().join("adapter_config.json"), "{}").unwrap();
    let e = err_text(Checkpoint::from_dir(d.path()));
    assert!(
        e.contains("PEFT adapter") && e.contains("adapter_from_dir"),
        "{e}"
    );
    let adapter = Checkpoint::adapter_from_dir(d.path()).unwrap().unwrap();
    assert_eq!(adapter.names(), vec![a]);

    // Next to a base model: the model loads without the adapter's tensors.
    save(
        &d.path().join("model.safetensors"),
        &[("proj.weight", t(&[2, 3], 1.0))],
    );
    let base = Checkpoint::from_dir(d.path()).unwrap();
    assert_eq!(base.names(), vec!["proj.weight"]);
}

#[test]
fn safetensors_is_preferred_over_bin() {
    let d = TempDir::new("prefer");
    save(
        &d.path().join("model.safetensors"),
        &[("proj.weight", t(&[2, 3], 1.0))],
    );
    // Not a valid pickle: reading it would fail.
    std::fs::write(d.path().join("pytorch_model.bin"), b"junk").unwrap();
    let c = Checkpoint::from_dir(d.path()).unwrap();
    assert!(c.origin().ends_with("model.safetensors"), "{}", c.origin());
}

fn mem(names: &[(&str, &[usize])], origin: &str) -> Checkpoint {
    let m = names
        .iter()
        .map(|(n, s)| (n.to_string(), t(s, 1.0)))
        .collect();
    Checkpoint::from_tensors(m, origin)
}

#[test]
fn merged_checkpoint_attributes_tensors_per_part() {
    let vit = mem(
        &[
            ("blocks.0.norm1.weight", &[4]),
            ("blocks.0.norm1.bias", &[4]),
        ],
        "eva_vit_g.pth",
    );
    let qf = mem(
        &[("query_tokens", &[1, 2, 4]), ("unused.weight", &[1])],
        "instruct_blip_qformer.pth",
    );
    let llm = mem(&[("lm_head.weight", &[3, 4])], "/models/vicuna");
    let c = Checkpoint::merged(vec![
        ("visual_encoder", vit.clone()),
        ("qformer.", qf),
        ("", llm),
    ])
    .unwrap();
    assert_eq!(
        c.names(),
        vec![
            "lm_head.weight",
            "qformer.query_tokens",
            "qformer.unused.weight",
            "visual_encoder.blocks.0.norm1.bias",
            "visual_encoder.blocks.0.norm1.weight",
        ]
    );
    let vb = c.var_builder(DType::F32, &Device::Cpu);
    calico_nn::LayerNorm::new(4, 1e-6, vb.pp("visual_encoder.blocks.0.norm1")).unwrap();
    vb.get((1, 2, 4), "qformer.query_tokens").unwrap();
    let r = c.report();
    assert_eq!(r.parts.len(), 3);
    assert_eq!(r.parts[0].prefix, "visual_encoder");
    assert_eq!(r.parts[0].origin, "eva_vit_g.pth");
    assert_eq!(r.parts[0].loaded.len(), 2);
    assert!(r.parts[0].unexpected.is_empty());
    assert_eq!(r.parts[1].loaded, vec!["qformer.query_tokens"]);
    assert_eq!(r.parts[1].unexpected, vec!["qformer.unused.weight"]);
    assert_eq!(r.parts[2].unexpected, vec!["lm_head.weight"]);
    assert_eq!(
        r.unexpected,
        vec!["lm_head.weight", "qformer.unused.weight"]
    );
    let text = r.to_string();
    assert!(
        text.contains("part `qformer.` from instruct_blip_qformer.pth: 1 loaded, 1 unused"),
        "{text}"
    );
    assert!(
        text.contains("part (no prefix) from /models/vicuna: 0 loaded, 1 unused"),
        "{text}"
    );
    // Use is recorded in the part as well.
    assert!(vit.report().unexpected.is_empty(), "{}", vit.report());
    assert!(
        r.origin.contains("visual_encoder=eva_vit_g.pth"),
        "{}",
        r.origin
    );
}

#[test]
fn merged_duplicate_names_name_both_origins() {
    let a = mem(&[("visual_encoder.pos_embed", &[1])], "a.pth");
    let b = mem(&[("pos_embed", &[1])], "b.pth");
    let e = match Checkpoint::merged(vec![("", a), ("visual_encoder", b)]) {
        Ok(_) => panic!("duplicate accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("`visual_encoder.pos_embed`") && e.contains("a.pth") && e.contains("b.pth"),
        "{e}"
    );
}

#[test]
fn strict_builder_records_the_missing_tensor_it_failed_on() {
    let c = mem(&[("proj.weight", &[2, 3])], "one.safetensors");
    let vb = c.var_builder(DType::F32, &Device::Cpu);
    let e = calico_nn::Linear::new(3, 2, true, vb.pp("proj"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("proj.bias"), "{e}");
    let r = c.report();
    assert_eq!(r.missing, vec!["proj.bias"]);
    assert!(r.to_string().contains("1 missing"), "{r}");
    c.reset_report();
    assert!(c.report().missing.is_empty());
}

#[test]
fn lenient_builder_lists_every_missing_tensor() {
    let c = Checkpoint::from_tensors(HashMap::new(), "empty");
    let vb = c.var_builder_lenient(None, DType::F32, &Device::Cpu);
    let lin = calico_nn::Linear::new(3, 2, true, vb.pp("model.proj")).unwrap();
    calico_nn::LayerNorm::new(2, 1e-5, vb.pp("model.vision_tower.norm")).unwrap();
    let y = lin
        .forward(&Tensor::ones((1, 3), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(y.dims(), &[1, 2]);
    let r = c.report();
    assert_eq!(
        r.missing,
        vec![
            "model.proj.bias",
            "model.proj.weight",
            "model.vision_tower.norm.bias",
            "model.vision_tower.norm.weight",
        ]
    );
    let groups = r.groups();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[1].group, "model.vision_tower");
    assert_eq!((groups[1].loaded, groups[1].missing), (0, 2));
    let text = r.to_string();
    assert!(
        text.contains("  model.vision_tower: 0 loaded, 2 missing"),
        "{text}"
    );
    assert!(
        text.contains("4 tensors the model asked for are not in the checkpoint"),
        "{text}"
    );
}

#[test]
fn lenient_builder_records_wrong_shapes() {
    let c = mem(&[("proj.weight", &[2, 4]), ("proj.bias", &[2])], "x");
    let vb = c.var_builder_lenient(None, DType::F32, &Device::Cpu);
    calico_nn::Linear::new(3, 2, true, vb.pp("proj")).unwrap();
    let r = c.report();
    assert_eq!(
        r.misshaped,
        vec!["proj.weight: checkpoint [2, 4], model [2, 3]"]
    );
    assert!(r.missing.is_empty());
}

#[test]
fn group_names() {
    use calico_model::load::group_of;
    assert_eq!(
        group_of("model.layers.3.mlp.up_proj.weight"),
        "model.layers"
    );
    assert_eq!(group_of("model.embed_tokens.weight"), "model.embed_tokens");
    assert_eq!(group_of("lm_head.weight"), "lm_head");
    assert_eq!(group_of("blocks.0.attn.qkv.weight"), "blocks");
    assert_eq!(group_of("query_tokens"), "query_tokens");
}

const PY: &str = "/work/main/.venv-ref/bin/python";

fn torch_save(dir: &Path, script: &str) -> bool {
    if !Path::new(PY).is_file() {
        eprintln!("skipping: {PY} not found");
        return false;
    }
    let out = std::process::Command::new(PY)
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn pytorch_bin_single_and_sharded() {
    let d = TempDir::new("bin");
    let script = r#"
import sys, torch, json, os
d = sys.argv[1]
torch.save({"proj.weight": torch.arange(6.).reshape(2, 3), "proj.bias": torch.tensor([7., 8.])},
           os.path.join(d, "pytorch_model.bin"))
s = os.path.join(d, "sharded"); os.makedirs(s)
torch.save({"proj.weight": torch.arange(6.).reshape(2, 3)}, os.path.join(s, "pytorch_model-00001-of-00002.bin"))
torch.save({"proj.bias": torch.tensor([7., 8.]), "extra": torch.zeros(1)}, os.path.join(s, "pytorch_model-00002-of-00002.bin"))
json.dump({"weight_map": {"proj.weight": "pytorch_model-00001-of-00002.bin",
                          "proj.bias": "pytorch_model-00002-of-00002.bin",
                          "extra": "pytorch_model-00002-of-00002.bin"}},
          open(os.path.join(s, "pytorch_model.bin.index.json"), "w"))
"#;
    if !torch_save(d.path(), script) {
        return;
    }
    for dir in [d.path().to_path_buf(), d.path().join("sharded")] {
        let c = Checkpoint::from_dir(&dir).unwrap();
        let vb = c.var_builder(DType::F32, &Device::Cpu);
        let lin = calico_nn::Linear::new(3, 2, true, vb.pp("proj")).unwrap();
        let y = lin
            .forward(&Tensor::new(&[[1f32, 1., 1.]], &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![10.0, 20.0]]);
        let r = c.report();
        assert!(r.missing.is_empty(), "{r}");
        assert_eq!(r.loaded, vec!["proj.bias", "proj.weight"]);
    }
    // A shard the index assigns a tensor it lacks.
    write_index(
        &d.path().join("sharded"),
        "pytorch_model.bin.index.json",
        &[("proj.bias", "pytorch_model-00001-of-00002.bin")],
    );
    let e = err_text(Checkpoint::from_dir(d.path().join("sharded")));
    assert!(
        e.contains("pytorch_model.bin.index.json")
            && e.contains("pytorch_model-00001-of-00002.bin")
            && e.contains("`proj.bias`"),
        "{e}"
    );
}
