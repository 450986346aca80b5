//! Parity replay for `llama` (HF `LlamaForCausalLM`) and `llama_lora` (PEFT
//! LoRA on top of it) cases.
//!
//! `llama`: inputs `input_ids` `(B, T)` and optionally `attention_mask`;
//! outputs `logits` and `last_hidden_state` (after the final norm).
//!
//! `llama_lora`: config also has `lora: {r, lora_alpha, target_modules}` and
//! `names`: `peft_state_dict` (every tensor under PEFT's
//! `get_peft_model(..).state_dict()` names) or `peft_adapter_file` (HF base
//! names plus the adapter under `save_pretrained`'s names). Outputs
//! `logits` (adapter unmerged) and `logits_merged` (after `merge_lora`).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor};

use super::lora::{peft_adapter_file_map, peft_state_dict_adapter_map, peft_state_dict_base_map};
use super::{Llama, LlamaConfig, LoraSpec};
use crate::load::Checkpoint;
use crate::parity::Case;

fn inputs(case: &Case, device: &Device) -> Result<(Tensor, Option<Tensor>)> {
    let ids = case
        .inputs
        .get("input_ids")
        .ok_or_else(|| candle_core::Error::Msg("missing input `inputs.input_ids`".into()))?
        .to_dtype(DType::U32)?
        .to_device(device)?;
    let mask = if case.inputs.contains_key("attention_mask") {
        Some(case.input("attention_mask")?.to_device(device)?)
    } else {
        None
    };
    Ok((ids, mask))
}

/// Replays a `llama` case.
pub fn parity_forward(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let cfg: LlamaConfig = case.config()?;
    let model = Llama::new(&cfg, ckpt.var_builder(DType::F32, device))?;
    let (ids, mask) = inputs(case, device)?;
    let out = model.forward_embeds(
        &model.embed(&ids)?,
        super::ForwardOptions {
            attention_mask: mask.as_ref(),
            logits: true,
            ..Default::default()
        },
    )?;
    let logits = out
        .logits
        .ok_or_else(|| candle_core::Error::Msg("no logits".into()))?;
    Ok(BTreeMap::from([
        ("logits".to_string(), logits),
        ("last_hidden_state".to_string(), out.last_hidden_state),
    ]))
}

/// Replays a `llama_lora` case.
pub fn parity_forward_lora(
    case: &Case,
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let cfg: LlamaConfig = case.config()?;
    let spec: LoraSpec = serde_json::from_value(
        case.config
            .get("lora")
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("config has no `lora`".into()))?,
    )
    .map_err(|e| candle_core::Error::Msg(format!("config `lora`: {e}")))?;
    let names = case
        .config
        .get("names")
        .and_then(|v| v.as_str())
        .unwrap_or("peft_state_dict");
    let (base_map, adapter_map) = match names {
        "peft_state_dict" => (
            Some(peft_state_dict_base_map(&spec)),
            peft_state_dict_adapter_map(),
        ),
        "peft_adapter_file" => (None, peft_adapter_file_map()),
        other => candle_core::bail!(
            "config `names` is `{other}`, expected `peft_state_dict` or `peft_adapter_file`"
        ),
    };
    let base = ckpt.var_builder_mapped(base_map, DType::F32, device);
    let adapters = ckpt.var_builder_mapped(Some(adapter_map), DType::F32, device);
    let mut model = Llama::with_lora(&cfg, &spec, base, adapters)?;
    let (ids, mask) = inputs(case, device)?;
    let logits = model.forward(&ids, mask.as_ref())?;
    model.merge_lora()?;
    let merged = model.forward(&ids, mask.as_ref())?;
    Ok(BTreeMap::from([
        ("logits".to_string(), logits),
        ("logits_merged".to_string(), merged),
    ]))
}
