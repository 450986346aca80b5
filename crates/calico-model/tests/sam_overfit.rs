//! One-batch overfit of the trainable part of LISA/GLaMM's segmentation path
//! (anchors.md §2.3): a `[SEG]` hidden state → a linear projection → SAM's
//! prompt encoder (text path) → SAM's mask decoder, trained with focal + Dice
//! loss and AdamW against a fixed disk mask over a frozen image embedding.
//! If the decoder were not differentiable end to end (a fused kernel cutting
//! the graph, a wrong transposed-conv gradient) the loss would stall.

use calico_model::sam::mask_decoder::{MaskDecoder, MaskDecoderConfig};
use calico_model::sam::prompt_encoder::{PromptEncoder, PromptEncoderConfig};
use calico_nn::loss::{dice_loss, focal_loss, FocalConfig};
use calico_nn::Linear;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HIDDEN: usize = 32;
const DIM: usize = 32;
const GRID: usize = 8;
const MASK: usize = 4 * GRID;
/// The reference (PyTorch, same setup) gets a 20× drop in about 50 steps.
const MAX_STEPS: usize = 200;

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], bound: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-bound..bound.max(f32::MIN_POSITIVE)))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// `nn.Embedding` weights and the Fourier matrix (unit-variance in SAM).
fn is_embedding(name: &str) -> bool {
    let module = name.trim_end_matches(".weight");
    module.ends_with("iou_token")
        || module.ends_with("mask_tokens")
        || module.ends_with("not_a_point_embed")
        || module.ends_with("no_mask_embed")
        || module.contains("point_embeddings.")
        || name.ends_with("positional_encoding_gaussian_matrix")
}

/// Replaces every variable's (unseeded) initial value with one drawn from
/// `seed`, following PyTorch's defaults: norms at 1/0, layers uniform in
/// ±1/√fan_in, embeddings and the Fourier matrix with unit variance.
fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let value = if dims.len() == 1 && name.ends_with(".weight") {
            Tensor::ones(dims[0], DType::F32, &Device::Cpu)?
        } else if dims.len() == 1 {
            Tensor::zeros(dims[0], DType::F32, &Device::Cpu)?
        } else if is_embedding(name) {
            uniform(&mut rng, &dims, 3f32.sqrt())?
        } else {
            // (out, in, …) for linear and conv layers; a transposed conv's
            // (in, out, 2, 2) gives PyTorch's fan-in convention too.
            let fan_in: usize = dims[1..].iter().product();
            uniform(&mut rng, &dims, 1.0 / (fan_in as f32).sqrt())?
        };
        var.set(&value)?;
    }
    Ok(())
}

/// A disk of radius 9 centred at (13, 18) on the 32×32 low-res grid.
fn target_mask() -> Result<Tensor> {
    let v: Vec<f32> = (0..MASK * MASK)
        .map(|i| {
            let (y, x) = ((i / MASK) as f32, (i % MASK) as f32);
            if (y - 13.0).powi(2) + (x - 18.0).powi(2) <= 81.0 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(v, (1, MASK, MASK), &Device::Cpu)
}

fn iou(logits: &Tensor, target: &Tensor) -> Result<f32> {
    let pred: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let tgt: Vec<f32> = target.flatten_all()?.to_vec1()?;
    let (mut inter, mut union) = (0usize, 0usize);
    for (p, t) in pred.iter().zip(&tgt) {
        let (p, t) = (*p > 0.0, *t > 0.5);
        inter += (p && t) as usize;
        union += (p || t) as usize;
    }
    Ok(inter as f32 / union.max(1) as f32)
}

#[test]
fn sam_decoder_overfits_one_seg_prompt() -> Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let pe_cfg = PromptEncoderConfig {
        embed_dim: DIM,
        image_embedding_size: [GRID, GRID],
        input_image_size: [MASK, MASK],
        mask_in_chans: 8,
    };
    let dec_cfg = MaskDecoderConfig {
        transformer_dim: DIM,
        depth: 2,
        num_heads: 4,
        mlp_dim: 64,
        attention_downsample_rate: 2,
        num_multimask_outputs: 3,
        iou_head_depth: 3,
        iou_head_hidden_dim: 32,
    };
    let prompt_encoder = PromptEncoder::new(&pe_cfg, vb.pp("prompt_encoder"))?;
    let decoder = MaskDecoder::new(&dec_cfg, vb.pp("mask_decoder"))?;
    let seg_proj = Linear::new(HIDDEN, DIM, true, vb.pp("text_hidden_fcs"))?;
    seeded_init(&varmap, 7)?;

    // Frozen inputs: the [SEG] token's hidden state and an image embedding
    // in which, as in a real one, the object's cells share a direction:
    // noise + (fraction of the cell inside the disk) · v.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let hidden = uniform(&mut rng, &[1, HIDDEN], 1.7)?;
    let target = target_mask()?;
    let noise = uniform(&mut rng, &[1, DIM, GRID, GRID], 1.7)?;
    let v = uniform(&mut rng, &[1, DIM, 1, 1], 1.7)?;
    let coverage = target.reshape((1, 1, GRID, 4, GRID, 4))?.mean(5)?.mean(3)?; // (1, 1, GRID, GRID)
    let image = (noise + coverage.broadcast_mul(&v)?)?;

    // As in LISA and GLaMM, the prompt encoder stays frozen (its Fourier
    // matrix is a fixed buffer in SAM); the mask decoder and the [SEG]
    // projection train.
    let trainable: Vec<candle_core::Var> = {
        let data = varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = data
            .keys()
            .filter(|n| !n.starts_with("prompt_encoder."))
            .collect();
        names.sort();
        names.into_iter().map(|n| data[n].clone()).collect()
    };
    let mut opt = AdamW::new(
        trainable,
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    // One training batch: the [SEG] prompt's mask logits and its loss.
    let forward = || -> Result<(Tensor, Tensor)> {
        let text = seg_proj.forward(&hidden)?.unsqueeze(1)?; // (1, 1, C)
        let (sparse, dense) = prompt_encoder.forward_text(&text)?;
        let image_pe = prompt_encoder.get_dense_pe()?;
        let (masks, _iou) = decoder.forward(&image, &image_pe, &sparse, &dense, false)?;
        let logits = masks.squeeze(1)?; // (1, 4H, 4W)
        let focal = focal_loss(&logits, &target, FocalConfig::default())?;
        let dice = dice_loss(&logits, &target)?;
        Ok(((focal + dice)?, logits))
    };

    let mut first = None;
    let mut last = f32::INFINITY;
    let mut logits = None;
    for i in 0..MAX_STEPS {
        let (loss, l) = forward()?;
        last = loss.to_scalar::<f32>()?;
        let first = *first.get_or_insert(last);
        logits = Some(l);
        if last * 20.0 < first {
            eprintln!("20x lower after {i} steps");
            break;
        }
        opt.backward_step(&loss)?;
    }
    let first = first.expect("at least one step");
    let logits = logits.expect("at least one step");
    let iou = iou(&logits, &target)?;
    eprintln!("loss {first:.4} → {last:.5}, IoU {iou:.3}");
    assert!(
        last * 10.0 <= first,
        "loss only fell from {first} to {last} in {MAX_STEPS} steps"
    );
    assert!(iou > 0.95, "mask IoU with the target only {iou}");
    Ok(())
}
