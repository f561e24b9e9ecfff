"""Fine-tuning: start from a checkpoint's model variables with a new head and a lower lr.

    python train.py --config=configs/finetune.py:MODEL,DATASET --workdir=DIR \
        --config.init_from=CHECKPOINT

CHECKPOINT is a workdir of this system (its latest checkpoint) or an `archs.convert` output
(`python -m archs.convert --model resnet50 --from resnet50.pth --out DIR`); variables whose
shape differs (the classifier, for another num_classes) keep their fresh initialisation.
No paper: the recipe is ours (docs/recipes.md): batch 64, SGD Nesterov momentum 0.9, lr 0.01
(a tenth of training from scratch) with cosine decay over 10 epochs, weight decay 1e-4,
random-resized crop + flip. Default ARG: resnet50,imagenette/320px-v2. Expected: no reference
figure; unverified. Time: not measured.
"""

from archs.training.config import base_config


def get_config(arg: str | None = None):
    model, _, dataset = (arg or "resnet50,imagenette/320px-v2").partition(",")
    c = base_config()
    c.model = model
    c.dataset = dataset or "imagenette/320px-v2"
    c.eval_split = "validation"
    c.data_pipeline = "stream"
    c.batch_size = 64
    c.learning_rate = 0.01
    c.nesterov = True
    c.schedule = "cosine"
    c.num_epochs = 10
    c.weight_decay = 1e-4
    c.augment = "inception"
    c.log_every_steps = 50
    return c
