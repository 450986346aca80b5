//! Golden tests of the composed strings, using a fixed template choice.

use super::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A picker that always returns `wanted` and fails the test if the list
/// offered does not contain it.
fn fixed(wanted: &'static [&'static str]) -> impl FnMut(&'static [&'static str]) -> &'static str {
    let mut queue = wanted.iter().copied();
    move |list| {
        let t = queue.next().expect("more template choices than expected");
        assert!(
            list.contains(&t),
            "{t:?} is not in the offered list {list:?}"
        );
        t
    }
}

fn mask(label: &str, image: usize) -> MaskRef {
    MaskRef {
        label: label.to_string(),
        image,
    }
}

#[test]
fn golden_common_object() {
    let mut pick = fixed(&["The common object is {the_objects}."]);
    let a = common_object_with(&["chair"], 2, &mut pick).unwrap();
    assert_eq!(
        a.text,
        "The common object is <p> the chair </p> [SEG] (IMAGE1) [SEG] (IMAGE2)."
    );
    assert_eq!(a.masks, vec![mask("chair", 0), mask("chair", 1)]);
}

#[test]
fn golden_common_object_plural_and_indefinite() {
    let mut pick = fixed(&["The images show {a_objects}."]);
    let a = common_object_with(&["apple", "bowl"], 3, &mut pick).unwrap();
    assert_eq!(
        a.text,
        "The images show <p> an apple </p> [SEG] (IMAGE1) [SEG] (IMAGE2) [SEG] (IMAGE3) \
         and <p> a bowl </p> [SEG] (IMAGE1) [SEG] (IMAGE2) [SEG] (IMAGE3)."
    );
    let expected: Vec<_> = ["apple", "bowl"]
        .iter()
        .flat_map(|l| (0..3).map(move |i| mask(l, i)))
        .collect();
    assert_eq!(a.masks, expected);
}

#[test]
fn placeholder_at_sentence_start_is_capitalised_inside_the_phrase() {
    let mut pick = fixed(&["{a_objects} appears in {both} images."]);
    let a = common_object_with(&["ottoman"], 2, &mut pick).unwrap();
    assert_eq!(
        a.text,
        "<p> An ottoman </p> [SEG] (IMAGE1) [SEG] (IMAGE2) appears in both images."
    );
    let mut pick = fixed(&["{a_objects} appears in {both} images."]);
    let a = common_object_with(&["ottoman"], 4, &mut pick).unwrap();
    assert!(a.text.ends_with("appears in all images."), "{}", a.text);
}

#[test]
fn golden_common_object_none() {
    let none: [&str; 0] = [];
    let mut pick = fixed(&["The images do not share a common object."]);
    let a = common_object_with(&none, 2, &mut pick).unwrap();
    assert_eq!(a.text, "The images do not share a common object.");
    assert!(a.masks.is_empty());
}

#[test]
fn golden_identification_same() {
    let mut pick = fixed(&["{both} images show {a_objects}."]);
    let a = identify_objects_with(&["dog", "dog"], &mut pick).unwrap();
    assert_eq!(
        a.text,
        "Both images show <p> a dog </p> [SEG] (IMAGE1) [SEG] (IMAGE2)."
    );
    assert_eq!(a.masks, vec![mask("dog", 0), mask("dog", 1)]);

    let mut pick = fixed(&["{both} images show {a_objects}."]);
    let a = identify_objects_with(&["dog", "dog", "dog"], &mut pick).unwrap();
    assert_eq!(
        a.text,
        "All images show <p> a dog </p> [SEG] (IMAGE1) [SEG] (IMAGE2) [SEG] (IMAGE3)."
    );
}

#[test]
fn golden_identification_different() {
    let mut pick = fixed(&["The images show {a_objects}."]);
    let a = identify_objects_with(&["chair", "ottoman"], &mut pick).unwrap();
    assert_eq!(
        a.text,
        "The images show <p> a chair </p> [SEG] (IMAGE1) and <p> an ottoman </p> [SEG] (IMAGE2)."
    );
    assert_eq!(a.masks, vec![mask("chair", 0), mask("ottoman", 1)]);
}

#[test]
fn identification_groups_equal_labels_in_order_of_first_appearance() {
    let mut pick = fixed(&["The images show {a_objects}."]);
    let a = identify_objects_with(&["dog", "cat", "dog"], &mut pick).unwrap();
    assert_eq!(
        a.text,
        "The images show <p> a dog </p> [SEG] (IMAGE1) [SEG] (IMAGE3) and <p> a cat </p> [SEG] (IMAGE2)."
    );
    assert_eq!(
        a.masks,
        vec![mask("dog", 0), mask("dog", 2), mask("cat", 1)]
    );
}

#[test]
fn identification_accepts_mentions_in_any_order() {
    let mentions = vec![
        ObjectMention {
            label: "ottoman".into(),
            image: 1,
        },
        ObjectMention {
            label: "chair".into(),
            image: 0,
        },
    ];
    let mut pick = fixed(&["The images show {a_objects}."]);
    let a = identification_with(&mentions, 2, &mut pick).unwrap();
    assert_eq!(a.masks, vec![mask("chair", 0), mask("ottoman", 1)]);
}

#[test]
fn golden_identification_single_image() {
    let mut pick = fixed(&["The image shows {a_objects}."]);
    let a = identify_objects_with(&["elephant"], &mut pick).unwrap();
    assert_eq!(
        a.text,
        "The image shows <p> an elephant </p> [SEG] (IMAGE1)."
    );
}

#[test]
fn golden_common_parts() {
    let mut pick = fixed(&[
        "{both} images show {a_objects}.",
        "The common parts between the objects are {the_parts}.",
    ]);
    let a = common_parts_with(&["chair", "chair"], &["leg", "seat", "back"], &mut pick).unwrap();
    assert_eq!(
        a.text,
        "Both images show <p> a chair </p> [SEG] (IMAGE1) [SEG] (IMAGE2). \
         The common parts between the objects are \
         <p> the leg </p> [SEG] (IMAGE1) [SEG] (IMAGE2), \
         <p> the seat </p> [SEG] (IMAGE1) [SEG] (IMAGE2), and \
         <p> the back </p> [SEG] (IMAGE1) [SEG] (IMAGE2)."
    );
    let mut expected = vec![mask("chair", 0), mask("chair", 1)];
    for p in ["leg", "seat", "back"] {
        expected.extend([mask(p, 0), mask(p, 1)]);
    }
    assert_eq!(a.masks, expected);
}

#[test]
fn golden_common_parts_both_objects_have() {
    let mut pick = fixed(&[
        "The images show {a_objects}.",
        "{both} objects have {the_parts}.",
    ]);
    let a = common_parts_with(&["chair", "ottoman"], &["leg", "seat"], &mut pick).unwrap();
    assert_eq!(
        a.text,
        "The images show <p> a chair </p> [SEG] (IMAGE1) and <p> an ottoman </p> [SEG] (IMAGE2). \
         Both objects have <p> the leg </p> [SEG] (IMAGE1) [SEG] (IMAGE2) and \
         <p> the seat </p> [SEG] (IMAGE1) [SEG] (IMAGE2)."
    );
}

#[test]
fn golden_unique_parts() {
    let mut pick = fixed(&[
        "The images show {a_objects}.",
        "The unique parts between the objects are {the_parts}.",
    ]);
    let parts = vec![("headboard", vec![1]), ("arm", vec![0])];
    let a = unique_parts_with(&["chair", "bed"], &parts, &mut pick).unwrap();
    assert_eq!(
        a.text,
        "The images show <p> a chair </p> [SEG] (IMAGE1) and <p> a bed </p> [SEG] (IMAGE2). \
         The unique parts between the objects are <p> the headboard </p> [SEG] (IMAGE2) and \
         <p> the arm </p> [SEG] (IMAGE1)."
    );
    assert_eq!(
        a.masks,
        vec![
            mask("chair", 0),
            mask("bed", 1),
            mask("headboard", 1),
            mask("arm", 0)
        ]
    );
}

#[test]
fn golden_unique_parts_distinct_singular() {
    let mut pick = fixed(&[
        "The images show {a_objects}.",
        "The distinct part is {the_parts}.",
    ]);
    let parts = vec![("headboard", vec![1])];
    let a = unique_parts_with(&["chair", "bed"], &parts, &mut pick).unwrap();
    assert!(a
        .text
        .ends_with(" The distinct part is <p> the headboard </p> [SEG] (IMAGE2)."));
}

#[test]
fn golden_empty_part_lists() {
    let none: [(&str, Vec<usize>); 0] = [];
    let mut pick = fixed(&[
        "{both} images show {a_objects}.",
        "The objects have no unique parts.",
    ]);
    let a = unique_parts_with(&["cup", "cup"], &none, &mut pick).unwrap();
    assert_eq!(
        a.text,
        "Both images show <p> a cup </p> [SEG] (IMAGE1) [SEG] (IMAGE2). The objects have no unique parts."
    );
    assert_eq!(a.masks.len(), 2);

    let no_parts: [&str; 0] = [];
    let mut pick = fixed(&[
        "The images show {a_objects}.",
        "The objects have no parts in common.",
    ]);
    let a = common_parts_with(&["cup", "kettle"], &no_parts, &mut pick).unwrap();
    assert_eq!(
        a.text,
        "The images show <p> a cup </p> [SEG] (IMAGE1) and <p> a kettle </p> [SEG] (IMAGE2). \
         The objects have no parts in common."
    );
}

#[test]
fn labels_are_normalised() {
    let mut pick = fixed(&["The common object is {the_objects}."]);
    let a = common_object_with(&["  office \t chair\n"], 1, &mut pick).unwrap();
    assert_eq!(
        a.text,
        "The common object is <p> the office chair </p> [SEG] (IMAGE1)."
    );
    assert_eq!(a.masks, vec![mask("office chair", 0)]);
}

#[test]
fn every_template_combination_composes() {
    // Exhaustively walk each list position with a counter-based picker.
    for k in 0..10 {
        let mut pick = |list: &'static [&'static str]| list[k % list.len()];
        for n in 1..=3 {
            let objs: Vec<String> = (0..n).map(|i| format!("thing {i}")).collect();
            let a = common_object_with(&["x"], n, &mut pick).unwrap();
            assert_eq!(a.masks.len(), n);
            let a = common_parts_with(&objs, &["p", "q"], &mut pick).unwrap();
            assert_eq!(a.masks.len(), n + 2 * n);
            let a = unique_parts_with(&objs, &[("p", vec![0])], &mut pick).unwrap();
            assert_eq!(a.masks.len(), n + 1);
            assert!(!a.text.contains('{'), "{}", a.text);
            assert_eq!(a.text.matches("[SEG]").count(), a.masks.len());
        }
    }
}

#[test]
fn composition_is_deterministic_per_seed_and_varies_across_seeds() {
    let run = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        common_parts(&["chair", "ottoman"], &["leg", "seat"], &mut rng).unwrap()
    };
    assert_eq!(run(3), run(3));
    let mut texts: Vec<String> = (0..40).map(|s| run(s).text).collect();
    texts.sort();
    texts.dedup();
    assert!(texts.len() > 3);
}

#[test]
fn error_no_images() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let none: [&str; 0] = [];
    assert_eq!(
        common_object(&["x"], 0, &mut rng).unwrap_err(),
        ComposeError::NoImages
    );
    assert_eq!(
        identify_objects(&none, &mut rng).unwrap_err(),
        ComposeError::NoImages
    );
    assert_eq!(
        common_parts(&none, &["leg"], &mut rng).unwrap_err(),
        ComposeError::NoImages
    );
    let e = unique_parts(&none, &[("leg", vec![0])], &mut rng).unwrap_err();
    assert_eq!(e, ComposeError::NoImages);
    assert!(e.to_string().contains("at least one image"));
}

#[test]
fn error_empty_label() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let e = common_object(&["chair", " \n"], 2, &mut rng).unwrap_err();
    assert_eq!(e, ComposeError::EmptyLabel { index: 1 });
    assert_eq!(e.to_string(), "label #1 is empty");
    let e = identify_objects(&[""], &mut rng).unwrap_err();
    assert_eq!(e, ComposeError::EmptyLabel { index: 0 });
    let e = common_parts(&["a"], &[""], &mut rng).unwrap_err();
    assert_eq!(e, ComposeError::EmptyLabel { index: 0 });
}

#[test]
fn error_reserved_text_in_label() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for (label, found) in [
        ("a <b", "<"),
        ("a>b", ">"),
        ("x [SEG] y", "[SEG]"),
        ("x (IMAGE1)", "(IMAGE"),
        ("<p>", "<"),
    ] {
        let e = common_object(&[label], 2, &mut rng).unwrap_err();
        assert!(
            matches!(&e, ComposeError::ReservedText { found: f, .. } if *f == found),
            "{label}: {e:?}"
        );
        assert!(e.to_string().contains("reserved"));
        let e = unique_parts(&["a", "b"], &[(label, vec![0])], &mut rng).unwrap_err();
        assert!(matches!(e, ComposeError::ReservedText { .. }));
        let e = identify_objects(&[label], &mut rng).unwrap_err();
        assert!(matches!(e, ComposeError::ReservedText { .. }));
    }
    // Lower-case "(image" and a lone bracket are ordinary text.
    assert!(common_object(&["(image x", "[SEG"], 2, &mut rng).is_ok());
}

#[test]
fn error_part_images() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let e = unique_parts(&["a", "b"], &[("leg", vec![2])], &mut rng).unwrap_err();
    assert_eq!(
        e,
        ComposeError::ImageOutOfRange {
            label: "leg".into(),
            image: 2,
            n_images: 2
        }
    );
    assert!(e.to_string().contains("out of range for 2 image(s)"));
    let e = unique_parts(&["a", "b"], &[("leg", vec![1, 1])], &mut rng).unwrap_err();
    assert_eq!(
        e,
        ComposeError::DuplicateImage {
            label: "leg".into(),
            image: 1
        }
    );
    let e = unique_parts(&["a", "b"], &[("leg", vec![])], &mut rng).unwrap_err();
    assert_eq!(
        e,
        ComposeError::NoImagesForPart {
            label: "leg".into()
        }
    );
}

#[test]
fn error_mentions() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let m = |label: &str, image| ObjectMention {
        label: label.into(),
        image,
    };
    let e = identification(&[m("a", 0)], 2, &mut rng).unwrap_err();
    assert_eq!(e, ComposeError::MissingMention { image: 1 });
    let e = identification(&[m("a", 0), m("b", 0)], 2, &mut rng).unwrap_err();
    assert_eq!(
        e,
        ComposeError::DuplicateImage {
            label: "b".into(),
            image: 0
        }
    );
    let e = identification(&[m("a", 5)], 2, &mut rng).unwrap_err();
    assert!(matches!(e, ComposeError::ImageOutOfRange { image: 5, .. }));
    let e = identification(&[], 0, &mut rng).unwrap_err();
    assert_eq!(e, ComposeError::NoImages);
}
