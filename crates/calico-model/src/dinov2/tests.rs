use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::*;

fn tiny(names: NameScheme, registers: usize, swiglu: bool) -> Dinov2Config {
    Dinov2Config {
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        mlp_ratio: 2.0,
        image_size: 12,
        patch_size: 4,
        use_swiglu_ffn: swiglu,
        names,
        interpolation: match names {
            NameScheme::Hf => Interpolation::Hf,
            NameScheme::Hub => Interpolation::Hub,
        },
        ..Dinov2Config::vit_b14()
    }
    .with_registers(registers)
}

fn pixels(b: usize, h: usize, w: usize) -> Tensor {
    let n = b * 3 * h * w;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (b, 3, h, w), &Device::Cpu).unwrap()
}

#[test]
fn gradient_reaches_every_parameter() {
    for (names, registers, swiglu) in [
        (NameScheme::Hf, 0, false),
        (NameScheme::Hf, 2, true),
        (NameScheme::Hub, 0, true),
        (NameScheme::Hub, 4, false),
    ] {
        let cfg = tiny(names, registers, swiglu);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = Dinov2Model::new(&cfg, vb).unwrap();
        // A non-square input of a different grid, so the position
        // embeddings go through the resampling.
        let out = model.forward(&pixels(2, 8, 20)).unwrap();
        assert_eq!(out.last_hidden_state.dims(), &[2, 1 + registers + 10, 16]);
        let loss = out.last_hidden_state.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        assert!(!data.is_empty());
        calico_nn::testing::assert_gradients_reach(&grads, data.iter(), &format!("{names:?}"));
        let has = |s: &str| data.keys().any(|k| k.contains(s));
        match names {
            NameScheme::Hf => {
                assert!(has("layer_scale1.lambda1") && has("attention.attention.query"))
            }
            NameScheme::Hub => assert!(has("ls1.gamma") && has("attn.qkv")),
        }
    }
}

#[test]
fn intermediate_layers_and_truncated_forward_agree() {
    let cfg = tiny(NameScheme::Hf, 1, false);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Dinov2Model::new(&cfg, vb).unwrap();
    let x = pixels(1, 12, 12);
    let out = model.forward_with_layers(&x, &[0, 1]).unwrap();
    assert_eq!(out.hidden_states.len(), 2);
    let h1 = model.forward_to_layer(&x, 1).unwrap();
    let d = (h1 - &out.hidden_states[1].1)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    assert_eq!(model.num_prefix_tokens(), 2);
    assert_eq!(
        model
            .patch_tokens(&out.last_hidden_state)
            .unwrap()
            .dim(1)
            .unwrap(),
        9
    );
    assert_eq!(out.pooler_output.dims(), &[1, 16]);
    let e = model.forward_with_layers(&x, &[3]).unwrap_err().to_string();
    assert!(e.contains("layer 3"), "{e}");
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = tiny(NameScheme::Hub, 0, false);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Dinov2Model::new(&cfg, vb).unwrap();
    let e = model
        .forward(&Tensor::zeros((1, 1, 12, 12), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("channels"), "{e}");
    let e = model
        .forward(&Tensor::zeros((3, 12, 12), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("(batch"), "{e}");
    let e = model.forward(&pixels(1, 3, 12)).unwrap_err().to_string();
    assert!(e.contains("smaller than one"), "{e}");
    let mask = Tensor::zeros((1, 9), DType::U8, &Device::Cpu).unwrap();
    let e = model
        .embeddings
        .forward(&pixels(1, 12, 12), Some(&mask))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bool_masked_pos"), "{e}");
}

#[test]
fn hf_config_json_deserialises() {
    // The fields of facebook/dinov2-with-registers-base's config.json that
    // matter, plus ones we ignore.
    let json = r#"{"architectures": ["Dinov2WithRegistersModel"], "hidden_size": 768,
        "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
        "image_size": 518, "patch_size": 14, "layer_norm_eps": 1e-06,
        "layerscale_value": 1.0, "hidden_act": "gelu", "qkv_bias": true,
        "use_swiglu_ffn": false, "num_register_tokens": 4,
        "model_type": "dinov2_with_registers", "drop_path_rate": 0.0}"#;
    let cfg: Dinov2Config = serde_json::from_str(json).unwrap();
    assert_eq!(cfg, Dinov2Config::vit_b14().with_registers(4));
    assert_eq!(
        cfg.pos_interpolation(),
        PosInterpolation {
            offset: 0.0,
            antialias: true
        }
    );
    assert_eq!(
        Dinov2Config::vit_l14().hub().pos_interpolation(),
        PosInterpolation {
            offset: 0.1,
            antialias: false
        }
    );
    assert_eq!(swiglu_hidden(1536, 4.0), 4096);
}
