//! Loading a block from a checkpoint with a missing, mis-shaped or extra
//! tensor: the first two are errors naming the tensor (and both shapes), the
//! third is listed in the load report's warning.

use std::path::PathBuf;

use calico_model::parity::{run, Case};
use candle_core::{Device, Tensor};

fn fixture(name: &str) -> Case {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name);
    Case::read(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// One case per block family, and a weight each of them must read.
const CASES: &[(&str, &str)] = &[
    (
        "eva_vit_h32_d2_p14.safetensors",
        "encoder.layers.1.mlp.fc1.weight",
    ),
    (
        "qformer_h32_d2_f2.safetensors",
        "encoder.layer.0.crossattention.attention.key.weight",
    ),
    (
        "dinov2_hf_native.safetensors",
        "encoder.layer.1.mlp.fc2.weight",
    ),
    ("dinov2_hub_native.safetensors", "blocks.1.attn.qkv.weight"),
    (
        "sam_image_encoder_pad_window3.safetensors",
        "image_encoder.blocks.1.mlp.lin1.weight",
    ),
    (
        "sam_prompt_mask_decoder_text_d16_8x8.safetensors",
        "mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
    ),
];

#[test]
fn a_missing_tensor_is_an_error_naming_it() {
    for (file, tensor) in CASES {
        let mut case = fixture(file);
        assert!(
            case.weights.remove(*tensor).is_some(),
            "{file} has no {tensor}: {:?}",
            case.weights.keys().collect::<Vec<_>>()
        );
        let err = run(&case, &Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{file}: loaded without {tensor}"));
        let msg = err.to_string();
        assert!(
            msg.contains(tensor),
            "{file}: error does not name {tensor}: {msg}"
        );
    }
}

#[test]
fn a_misshaped_tensor_is_an_error_naming_it_and_both_shapes() {
    for (file, tensor) in CASES {
        let mut case = fixture(file);
        let t = case.weights[*tensor].clone();
        let dims = t.dims().to_vec();
        // Drop the first row: same rank, wrong shape.
        let mut bad = dims.clone();
        bad[0] -= 1;
        case.weights
            .insert(tensor.to_string(), t.narrow(0, 0, bad[0]).unwrap());
        let msg = run(&case, &Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{file}: loaded a mis-shaped {tensor}"))
            .to_string();
        assert!(
            msg.contains(tensor),
            "{file}: error does not name {tensor}: {msg}"
        );
        assert!(
            msg.contains(&format!("{bad:?}")) && msg.contains(&format!("{dims:?}")),
            "{file}: error does not give both shapes {bad:?} and {dims:?}: {msg}"
        );
    }
}

#[test]
fn extra_tensors_are_reported_as_unused() {
    for (file, _) in CASES {
        let mut case = fixture(file);
        case.weights.insert(
            "text_decoder.lm_head.weight".to_string(),
            Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
        let (_, report) = run(&case, &Device::Cpu).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            report.unexpected,
            vec!["text_decoder.lm_head.weight"],
            "{file}"
        );
        let text = report.to_string();
        assert!(
            text.contains(
                "warning: 1 tensors in the checkpoint were not used: text_decoder.lm_head.weight"
            ),
            "{text}"
        );
    }
}
