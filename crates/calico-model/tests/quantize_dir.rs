//! `calico::quantize`: the shipped demo model (assets/demo-model) written with
//! its LLM as a GGUF file of quantised projections, and loaded back both ways.

use std::path::{Path, PathBuf};

use calico_model::calico::quantize::{quantize_dir, LLM_GGUF_FILE};
use calico_model::calico::weights::{
    load_dir, load_dir_quantized_llm, MissingFrozen, FROZEN_FILE, SOURCES_FILE,
};
use calico_model::llama::{Llama, QuantizedMatmul};
use calico_nn::testing::max_rel_diff as rel;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

fn demo_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo-model")
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("calico-quantize-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn logits(llm: &Llama) -> Tensor {
    let ids = Tensor::new(&[[1u32, 7, 42, 99, 300, 12, 5, 2, 64, 8, 11]], &Device::Cpu).unwrap();
    llm.forward(&ids, None).unwrap()
}

#[test]
fn the_demo_model_quantizes_and_loads_back_both_ways() {
    let dev = Device::Cpu;
    let original = load_dir(&demo_model(), MissingFrozen::Error, &dev).unwrap();
    let want = logits(original.model.llm());
    let cases = [
        (GgmlDType::Q8_0, None, 0.02),
        (GgmlDType::Q8_0, Some(GgmlDType::Q8_0), 0.04),
        (GgmlDType::Q4_0, Some(GgmlDType::Q4_0), 0.4),
    ];
    for (dtype, vocab, max_rel) in cases {
        let out = temp(&format!("{dtype:?}-{vocab:?}"));
        let calls = std::cell::Cell::new(0);
        let r = quantize_dir(&demo_model(), &out, dtype, vocab, &|_, _| {
            calls.set(calls.get() + 1)
        })
        .unwrap();
        println!("{r}");
        assert!(calls.get() > 0);
        // tiny: 3 layers × 7 projections; an untied embedding and output
        // head; 3 × 2 norms and the final norm in F32, with the two tables
        // when they are not quantised.
        let tables = if vocab.is_some() { 2 } else { 0 };
        assert_eq!(
            (r.projections.count, r.vocab.count, r.llm_float),
            (21, tables, 9 - tables)
        );
        assert!(
            r.projections.quantized_bytes * 3 < r.projections.float_bytes,
            "{r}"
        );
        if vocab.is_some() {
            assert!(r.vocab.quantized_bytes * 3 < r.vocab.float_bytes, "{r}");
            assert!(r.to_string().contains("2 vocabulary tables →"), "{r}");
        }
        assert!(out.join(LLM_GGUF_FILE).is_file());
        let siblings: Vec<String> = std::fs::read_dir(out.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial-"))
            .collect();
        assert!(siblings.is_empty(), "left behind: {siblings:?}");

        // The float path dequantises the GGUF; `dequantize` multiplies the
        // same weights: equal up to float rounding.
        let float = load_dir(&out, MissingFrozen::Error, &dev).unwrap();
        assert!(float.report.is_complete(), "{}", float.report);
        assert!(
            float.report.checkpoint.unexpected.is_empty(),
            "{}",
            float.report
        );
        let from_float = logits(float.model.llm());
        for matmul in QuantizedMatmul::ALL {
            let q = load_dir_quantized_llm(&out, MissingFrozen::Error, &dev, matmul).unwrap();
            assert!(q.report.is_complete(), "{}", q.report);
            assert_eq!(q.report.quantized.values().sum::<usize>(), 21 + tables);
            // The report's bytes: the LLM's projections (and tables) leave
            // the float tensors for blocks that take less.
            let (fr, qr) = (&float.report, &q.report);
            assert_eq!(fr.quantized_bytes, 0);
            assert!(qr.quantized_bytes > 0 && qr.float_bytes < fr.float_bytes);
            assert!(qr.float_bytes + qr.quantized_bytes < fr.float_bytes, "{qr}");
            assert!(qr.to_string().contains("quantized blocks"), "{qr}");
            assert_eq!(q.model.llm().embed_weight().is_none(), vocab.is_some());
            let got = logits(q.model.llm());
            // 11 tokens: past Q8_MAX_ROWS, so q8 takes the dequantised
            // product too.
            assert!(rel(&got, &from_float) < 1e-5, "{dtype:?} {matmul:?}");
        }
        // The other files named by sources.json after the GGUF: q8 still
        // runs its integer kernels on a short input, dequantize does not.
        std::fs::rename(out.join(FROZEN_FILE), out.join("rest.safetensors")).unwrap();
        std::fs::write(
            out.join(SOURCES_FILE),
            r#"{"sources": [{"path": "rest.safetensors"}]}"#,
        )
        .unwrap();
        let short = Tensor::new(&[[1u32, 7, 42, 99]], &dev).unwrap();
        let run = |matmul| {
            let q = load_dir_quantized_llm(&out, MissingFrozen::Error, &dev, matmul).unwrap();
            q.model.llm().forward(&short, None).unwrap()
        };
        let float_short = float.model.llm().forward(&short, None).unwrap();
        assert!(rel(&run(QuantizedMatmul::Dequantize), &float_short) < 1e-5);
        assert!(
            rel(&run(QuantizedMatmul::Q8), &float_short) > 1e-4,
            "q8 did not run"
        );
        // Against the float model: the weights' own quantisation error.
        let e = rel(&from_float, &want);
        println!("{dtype:?}: logits rel err {e:.2e} against the float model");
        assert!(e > 0.0 && e < max_rel, "{dtype:?}: {e}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn bad_requests_write_nothing() {
    let dev = Device::Cpu;
    // k-types need rows of 256 values; tiny's are 64 and 128 wide.
    let out = temp("q4k");
    let e = quantize_dir(&demo_model(), &out, GgmlDType::Q4K, None, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0") && e.contains("do not split into Q4K blocks of 256"),
        "{e}"
    );
    assert!(!out.exists());
    // A non-empty output directory is refused.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let e = quantize_dir(&demo_model(), &out, GgmlDType::Q8_0, None, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already exists and is not an empty directory"),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
    let _ = std::fs::remove_dir_all(&out);
    // Not a block type.
    let e = quantize_dir(&demo_model(), &out, GgmlDType::F16, None, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a block-quantized type"), "{e}");
    // A directory without a GGUF LLM has nothing to keep quantized.
    let e = load_dir_quantized_llm(
        &demo_model(),
        MissingFrozen::Error,
        &dev,
        Default::default(),
    )
    .err()
    .expect("no GGUF")
    .to_string();
    assert!(e.contains("no GGUF LLM to keep quantized"), "{e}");
}
