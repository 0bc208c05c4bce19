//! The shipped specialty classifier on the held-out rows of its labelled set: the accuracy
//! is printed (docs/market.md reports it) and must stay above a floor that a classifier
//! answering at random (1 in 8) or always the same specialty could not reach.

use triad_market::matching::{LABELLED_SET, parse_labelled};
use triad_market::{SpecialtyClassifier, TfIdfClassifier};

#[test]
fn held_out_accuracy_is_reported_and_well_above_chance() {
    let examples = parse_labelled(LABELLED_SET).unwrap();
    let held_out: Vec<_> = examples.iter().filter(|e| e.held_out).collect();
    let classifier = TfIdfClassifier::embedded().unwrap();
    let specialties: Vec<&str> = classifier.specialties().collect();
    assert_eq!(specialties.len(), 8, "{specialties:?}");
    // Every specialty is held out at least five times, so no class is judged on luck.
    for s in &specialties {
        assert!(
            held_out.iter().filter(|e| e.specialty == *s).count() >= 5,
            "{s}"
        );
    }
    let (right, total) = classifier.accuracy(held_out.iter().copied());
    let accuracy = right as f64 / total as f64;
    println!(
        "held-out accuracy: {right}/{total} = {:.1} %",
        accuracy * 100.0
    );
    for e in &held_out {
        let got = classifier.classify(&e.text);
        if got.as_ref().map(|i| i.specialty.as_str()) != Some(e.specialty.as_str()) {
            println!("  miss: {:?} → {got:?} (want {})", e.text, e.specialty);
        }
    }
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy:.3} < 0.9");
    // Training rows are recognised almost perfectly (the model fits its data).
    let train: Vec<_> = examples.iter().filter(|e| !e.held_out).collect();
    let (right, total) = classifier.accuracy(train.iter().copied());
    assert!(right as f64 / total as f64 >= 0.95, "{right}/{total}");
}

#[test]
fn the_seed_prompts_read_as_expected() {
    let c = TfIdfClassifier::embedded().unwrap();
    let read = |t: &str| c.classify(t).map(|i| i.specialty);
    assert_eq!(read("What is 2+2?").as_deref(), Some("arithmetic"));
    assert_eq!(
        read("Generate 3 research questions about quantum computing").as_deref(),
        Some("questions")
    );
}
