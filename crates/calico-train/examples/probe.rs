use calico_model::config::CalicoConfig;
use calico_model::prompt::PromptFormat;
use calico_model::tokenizer::CalicoTokenizer;
use calico_train::{data, model, objective};
use candle_core::Device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(60.0);
    let bs: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(4);
    let lr: f64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(1e-3);
    let cfg = match std::env::var("CFG") {
        Ok(p) => CalicoConfig::from_json_file(std::path::Path::new(&p)).unwrap(),
        Err(_) => CalicoConfig::preset("tiny").unwrap(),
    };
    let bce = std::env::var("BCE").is_ok();
    let mut lc = if bce {
        objective::LossConfig {
            focal_gamma: 0.0,
            focal_alpha: None,
            ..Default::default()
        }
    } else {
        objective::LossConfig::default()
    };
    let ds = data::open(std::path::Path::new("/tmp/mp/train.jsonl"), &cfg).unwrap();
    let format = PromptFormat::vicuna_v1(cfg.image_tokens());
    let mut tok = CalicoTokenizer::word_level(&data::corpus(&ds.samples, &format)).unwrap();
    let special = tok.add_calico_tokens(None).unwrap();
    println!("vocab {}", tok.vocab_size());
    let b = model::build_random(&cfg, special, model::TrainableSet::All, 0, &Device::Cpu).unwrap();
    let mut m = b.model;
    m.set_prompt_format(format.clone()).unwrap();
    if std::env::var("CONST").is_ok() {
        constants(&b.vars);
        return;
    }
    let n_params: usize = b.vars.all_vars().iter().map(|v| v.elem_count()).sum();
    println!("vars {n_params}");
    if std::env::var("MASKONLY").is_ok() {
        lc.text = 0.0;
    }
    let only: Vec<usize> = (0..ds.len())
        .filter(|&i| {
            std::env::var("TASK")
                .map(|t| ds.samples[i].task == t)
                .unwrap_or(true)
        })
        .collect();
    let mut opt = AdamW::new(
        b.vars.all_vars(),
        ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    let t0 = Instant::now();
    let mut step = 0;
    let mut acc = (0.0, 0.0, 0.0, 0);
    while t0.elapsed().as_secs_f64() < secs {
        let exs: Vec<_> = (0..bs)
            .map(|i| {
                ds.example(
                    only[(step * bs + i) * 7919 % only.len()],
                    (step + i) % 2 == 0,
                    &tok,
                    &special,
                    &format,
                )
                .unwrap()
            })
            .collect();
        let l = objective::batch_loss(&m, &exs, &tok, &lc, None).unwrap();
        opt.backward_step(&l.total).unwrap();
        acc.0 += l.text;
        acc.1 += l.focal;
        acc.2 += l.dice;
        acc.3 += 1;
        step += 1;
        if step % 40 == 0 {
            let n = acc.3 as f64;
            println!(
                "step {step} t={:.0}s text {:.3} focal {:.4} dice {:.3} ({:.2} steps/s)",
                t0.elapsed().as_secs_f64(),
                acc.0 / n,
                acc.1 / n,
                acc.2 / n,
                step as f64 / t0.elapsed().as_secs_f64()
            );
            acc = (0.0, 0.0, 0.0, 0);
        }
    }
}

#[allow(dead_code)]
fn constants(map: &candle_nn::VarMap) {
    let data = map.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    for n in names {
        let v: Vec<f32> = data[&n]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        if v.len() > 1
            && v.windows(2).all(|w| w[0] == w[1])
            && !n.contains("norm")
            && !n.ends_with("bias")
        {
            println!("CONST {n} {:?} = {}", data[&n].dims(), v[0]);
        }
    }
}
