use super::*;
use crate::tasks::eval_tasks;
use crate::test_util::{backend, chat_tokenizer, tiny_model};

fn opts(seed: u64) -> SampleOptions {
    SampleOptions {
        max_new_tokens: 12,
        temperature: 1.0,
        seed,
        ..SampleOptions::default()
    }
}

#[test]
fn evaluation_judges_every_reply_and_is_deterministic() {
    let (tok, tmpl) = chat_tokenizer();
    let mut be = backend();
    let mut model = tiny_model(&mut be, &tok, 1);
    let tasks = eval_tasks(12, 0);
    let ev = evaluate_policy(&mut be, &mut model, &tok, &tmpl, &tasks, &opts(3)).unwrap();
    assert_eq!(ev.responses.len(), tasks.len());
    for (r, t) in ev.responses.iter().zip(&tasks) {
        assert_eq!(&r.task, t);
        assert_eq!(
            r.prompt_ids,
            tmpl.encode_prompt(&tok, &t.messages()).unwrap()
        );
        assert!(!r.ids.is_empty() && r.ids.len() <= 12);
        // The stop token ends generation and is the only way to "end".
        assert_eq!(r.ended, r.ids.last() == Some(&tmpl.end_id()));
        let j = judge(t, &r.text);
        assert_eq!((r.score, &r.reason), (j.score, &j.reason));
    }
    let per_kind_n: usize = ev.per_kind.iter().map(|k| k.n).sum();
    assert_eq!(per_kind_n, tasks.len());
    assert_eq!(ev.per_kind.len(), 4);
    let weighted: f32 = ev.per_kind.iter().map(|k| k.mean * k.n as f32).sum();
    assert!((weighted / tasks.len() as f32 - ev.mean_score).abs() < 1e-5);

    let again = evaluate_policy(&mut be, &mut model, &tok, &tmpl, &tasks, &opts(3)).unwrap();
    assert_eq!(again, ev);
    let other = evaluate_policy(&mut be, &mut model, &tok, &tmpl, &tasks, &opts(4)).unwrap();
    assert_ne!(
        other.responses, ev.responses,
        "the seed changes the samples"
    );
    assert!(evaluate_policy(&mut be, &mut model, &tok, &tmpl, &[], &opts(3)).is_err());
}

fn good(task: &crate::Task) -> String {
    crate::tasks::reference_answer(task, &mut kiln_model::Rng::new(0))
}

fn response(task: &crate::Task, text: &str) -> EvalResponse {
    let j = judge(task, text);
    EvalResponse {
        task: task.clone(),
        prompt_ids: vec![1],
        ids: vec![2],
        text: text.into(),
        ended: true,
        score: j.score,
        reason: j.reason,
    }
}

#[test]
fn win_rate_counts_ties_as_half() {
    let tasks = eval_tasks(4, 1);
    // Arithmetic, words, list, sentiment: a wins, ties, loses, ties.
    let a = summarise(vec![
        response(&tasks[0], &good(&tasks[0])),
        response(&tasks[1], "x"),
        response(&tasks[2], "nothing"),
        response(&tasks[3], "the end"),
    ]);
    let b = summarise(vec![
        response(&tasks[0], "no idea"),
        response(&tasks[1], "y"),
        response(&tasks[2], &good(&tasks[2])),
        response(&tasks[3], "a start"),
    ]);
    assert_eq!(win_rate(&a, &b).unwrap(), (1.0 + 0.5 + 0.0 + 0.5) / 4.0);
    assert_eq!(win_rate(&b, &a).unwrap(), 1.0 - win_rate(&a, &b).unwrap());
    assert_eq!(win_rate(&a, &a).unwrap(), 0.5);
    let short = summarise(a.responses[..3].to_vec());
    assert!(win_rate(&a, &short).is_err());
    let mut shuffled = b.clone();
    shuffled.responses.swap(0, 1);
    let err = win_rate(&a, &shuffled).unwrap_err().to_string();
    assert!(err.contains("task 0 differs"), "{err}");
}

#[test]
fn several_samples_per_task_are_the_repeated_tasks_sampled_in_order() {
    let (tok, tmpl) = chat_tokenizer();
    let mut be = backend();
    let mut model = tiny_model(&mut be, &tok, 1);
    let tasks = eval_tasks(5, 0);
    let ev =
        evaluate_policy_samples(&mut be, &mut model, &tok, &tmpl, &tasks, 3, &opts(7)).unwrap();
    assert_eq!((ev.samples_per_task, ev.responses.len()), (3, 15));
    let repeated: Vec<_> = tasks
        .iter()
        .flat_map(|t| [t.clone(), t.clone(), t.clone()])
        .collect();
    let flat = evaluate_policy(&mut be, &mut model, &tok, &tmpl, &repeated, &opts(7)).unwrap();
    assert_eq!(ev.responses, flat.responses);
    assert_eq!(ev.mean_score, flat.mean_score);
    let one =
        evaluate_policy_samples(&mut be, &mut model, &tok, &tmpl, &tasks, 1, &opts(7)).unwrap();
    let plain = evaluate_policy(&mut be, &mut model, &tok, &tmpl, &tasks, &opts(7)).unwrap();
    assert_eq!(one, plain);
    assert!(
        evaluate_policy_samples(&mut be, &mut model, &tok, &tmpl, &tasks, 0, &opts(7)).is_err()
    );
    // A win rate needs as many samples on both sides.
    assert!(win_rate(&ev, &flat).is_err());
}

#[test]
fn win_rate_over_samples_compares_each_tasks_mean() {
    let tasks = eval_tasks(2, 1);
    let (t0, t1) = (&tasks[0], &tasks[1]);
    // Task 0: a's mean beats b's. Task 1: a's one good reply of two loses
    // to b's two, although one of a's samples ties one of b's.
    let a = summarise_samples(
        vec![
            response(t0, &good(t0)),
            response(t0, "no idea"),
            response(t1, &good(t1)),
            response(t1, "nothing"),
        ],
        2,
    );
    let b = summarise_samples(
        vec![
            response(t0, "no idea"),
            response(t0, "nope"),
            response(t1, &good(t1)),
            response(t1, &good(t1)),
        ],
        2,
    );
    assert!(a.responses[0].score > a.responses[1].score);
    assert!(b.responses[2].score > a.responses[3].score);
    assert_eq!(win_rate(&a, &b).unwrap(), 0.5);
    assert_eq!(win_rate(&b, &a).unwrap(), 0.5);
    assert_eq!(win_rate(&a, &a).unwrap(), 0.5);
    let mut better = b.clone();
    better.responses[2] = response(t1, "nothing");
    better.responses[3] = response(t1, "nothing");
    let better = summarise_samples(better.responses, 2);
    assert_eq!(win_rate(&a, &better).unwrap(), 1.0);
    let mut ragged = a.clone();
    ragged.responses.pop();
    assert!(win_rate(&ragged, &ragged).is_err());
}

/// log p of a reply computed the slow way: full logits, log-softmax.
fn log_prob_by_hand(be: &mut BackendBox, model: &mut Gpt, r: &EvalResponse) -> f64 {
    let seq: Vec<u32> = r.prompt_ids.iter().chain(&r.ids).copied().collect();
    let t = seq.len() - 1;
    model.forward(be, &seq[..t], None, 1, t).unwrap();
    let logits = model.logits(be).unwrap();
    let v = model.config.vocab_size;
    let mut total = 0f64;
    for (j, &id) in r.ids.iter().enumerate() {
        let row = &logits[(r.prompt_ids.len() - 1 + j) * v..][..v];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        total += row[id as usize] as f64 - lse;
    }
    total
}

#[test]
fn response_log_probs_match_a_full_softmax_with_padding_in_the_batch() {
    let (tok, tmpl) = chat_tokenizer();
    let mut be = backend();
    let mut model = tiny_model(&mut be, &tok, 2);
    let tasks = eval_tasks(5, 2);
    let ev = evaluate_policy(&mut be, &mut model, &tok, &tmpl, &tasks, &opts(9)).unwrap();
    let lens: Vec<usize> = ev
        .responses
        .iter()
        .map(|r| r.prompt_ids.len() + r.ids.len())
        .collect();
    assert!(
        lens.iter().any(|&l| l != lens[0]),
        "rows of different lengths: {lens:?}"
    );
    let batched = response_log_probs(&mut be, &mut model, &ev.responses).unwrap();
    for (r, lp) in ev.responses.iter().zip(&batched) {
        let want = log_prob_by_hand(&mut be, &mut model, r);
        assert!(
            (lp - want).abs() < 1e-3 * (1.0 + want.abs()),
            "{lp} vs {want}"
        );
        assert!(*lp < 0.0);
    }
}

#[test]
fn kl_of_a_model_against_itself_is_zero_and_positive_against_another() {
    let (tok, tmpl) = chat_tokenizer();
    let mut be = backend();
    let mut policy = tiny_model(&mut be, &tok, 5);
    let mut same = tiny_model(&mut be, &tok, 5);
    // A sharply peaked reference: the same shapes with weights scaled up.
    let mut other = tiny_model(&mut be, &tok, 6);
    let scaled: Vec<Vec<f32>> = other
        .read_params(&mut be)
        .unwrap()
        .into_iter()
        .map(|p| p.into_iter().map(|x| x * 8.0).collect())
        .collect();
    other.write_params(&mut be, &scaled).unwrap();
    let tasks = eval_tasks(32, 3);
    let ev = evaluate_policy(&mut be, &mut policy, &tok, &tmpl, &tasks, &opts(1)).unwrap();
    let kl_same = kl_to_reference(&mut be, &mut policy, &mut same, &ev).unwrap();
    assert_eq!(kl_same, 0.0);
    // A near-uniform policy against a peaked reference: clearly positive.
    let kl_other = kl_to_reference(&mut be, &mut policy, &mut other, &ev).unwrap();
    assert!(kl_other > 0.0, "{kl_other}");
    let empty = summarise(vec![]);
    assert!(kl_to_reference(&mut be, &mut policy, &mut same, &empty).is_err());
}
