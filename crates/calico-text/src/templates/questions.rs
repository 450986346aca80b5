//! Question phrasings for each task. The first entry of every list is the
//! protocol's canonical form.

/// Questions asking for the object that every image contains.
pub const COMMON_OBJECT: &[&str] = &[
    "Can you segment the common object in these images?",
    "Please segment the common object in these photos.",
    "What is the common object in these photos? Please respond with segmentation masks.",
    "Which object appears in every one of these images? Please segment it.",
    "Segment the object that all of these pictures share.",
    "Could you find the object these images have in common and segment it?",
    "Identify the object shared across these images and provide its segmentation masks.",
    "What object do these pictures have in common? Answer with segmentation masks.",
    "Please locate and segment the object that is present in all of these images.",
    "Find the shared object in these photos and output a mask for it in each image.",
    "Is there an object that every image contains? Please segment it.",
    "Show me the common object in these pictures with segmentation masks.",
    "Produce segmentation masks for the object that these images share.",
    "Which object do these photos all contain? Respond with its masks.",
];

/// Questions asking for the parts that the objects share.
pub const COMMON_PARTS: &[&str] = &[
    "Can you segment the common parts of the objects in these images?",
    "Please segment the objects' common parts in these photos.",
    "Which parts do the objects in these images share? Please segment them.",
    "Segment the parts that the objects in these pictures have in common.",
    "What parts are shared by the objects in these photos? Respond with segmentation masks.",
    "Could you find and segment the parts common to the objects in these images?",
    "Please identify the shared parts of the objects in these pictures and segment them.",
    "Highlight the parts that all of the objects in these images have.",
    "Which object parts appear in every one of these images? Please provide masks.",
    "Locate the common parts of the objects shown in these photos and segment them.",
    "Find the parts the objects in these pictures share, and give a mask for each.",
    "Part by part, what do the objects in these images have in common? Please segment those parts.",
    "Please produce segmentation masks for the parts that the objects in these images share.",
    "Segment every part that is present on all of the objects in these photos.",
    "Can you show me the shared parts of the objects in these pictures with masks?",
    "Identify the parts common to the objects in these images and output their masks.",
    "Which parts do these objects have in common? Please answer with segmentation masks.",
];

/// Questions asking for the parts that not every object has.
pub const UNIQUE_PARTS: &[&str] = &[
    "Can you segment the unique parts of the objects in these images?",
    "Please segment the objects' unique parts in these photos.",
    "Which parts are unique to the objects in these images? Please segment them.",
    "Segment the parts that tell the objects in these pictures apart.",
    "What parts do only some of the objects in these photos have? Respond with segmentation masks.",
    "Could you find and segment the parts that the objects in these images do not share?",
    "Please identify the distinctive parts of the objects in these pictures and segment them.",
    "Highlight the parts that set the objects in these images apart from each other.",
    "Which object parts are missing from at least one of these images? Please provide masks.",
    "Locate the unique parts of the objects shown in these photos and segment them.",
    "Find the parts that are specific to individual objects in these pictures, and give a mask for each.",
    "Part by part, how do the objects in these images differ? Please segment the differing parts.",
    "Please produce segmentation masks for the parts that are not shared by the objects in these images.",
    "Segment every part that appears on some but not all of the objects in these photos.",
    "Can you show me the distinct parts of the objects in these pictures with masks?",
    "Identify the parts unique to the objects in these images and output their masks.",
    "Which parts does one object have that another lacks? Please answer with segmentation masks.",
];

/// Questions asking to name and segment the object in each image.
pub const IDENTIFY_OBJECTS: &[&str] = &[
    "Can you identify and segment the objects in these images?",
    "Please identify and segment the objects in these photos.",
    "What objects are shown in these images? Please respond with segmentation masks.",
    "Name the object in each of these pictures and segment it.",
    "Which objects do these photos contain? Answer with a mask for each.",
    "Could you tell me what the objects in these images are and segment them?",
    "Identify the main object in every image and provide its segmentation mask.",
    "Please recognise the objects in these pictures and output their masks.",
    "What is in each of these photos? Segment the objects you find.",
];
