"""nnU-Net trainers of nnunet-ext: thin nnUNetTrainer subclasses, one module per method.

This is the only package that imports ``nnunetv2.training``. Every class exported here is found by the
stock ``nnUNetv2_train`` / ``nnUNetv2_predict`` by name (see :mod:`nnunet_ext._autodiscover`); names are
unique ``nnUNetTrainer<Method>[_<setting>]`` without ``__``.
"""

from nnunet_ext.trainers.avagrad import (
    AvaGradMixin,
    LayerSpeedMixin,
    nnUNetTrainerAvaGrad,
    nnUNetTrainerAvaGrad_25epochs,
    nnUNetTrainerAvaGrad_1000epochs,
    nnUNetTrainerAvaGrad_demo,
    nnUNetTrainerAvaGrad_layerspeed,
    nnUNetTrainerAvaGradNoDA_25epochs,
    nnUNetTrainerEarlyStopAdam_25epochs,
    nnUNetTrainerEarlyStopAdam_50epochs,
    nnUNetTrainerEarlyStopAdamNoDA_25epochs,
    nnUNetTrainerEarlyStopSGD_25epochs,
    nnUNetTrainerEarlyStopSGDNoDA_25epochs,
    nnUNetTrainerSGD_layerspeed,
)
from nnunet_ext.trainers.budget import CPUBudgetMixin, FixedEpochsMixin, nnUNetTrainerCPU_demo, nnUNetTrainerCPU_smoke

__all__ = [
    "AvaGradMixin", "CPUBudgetMixin", "FixedEpochsMixin", "LayerSpeedMixin",
    "nnUNetTrainerAvaGrad", "nnUNetTrainerAvaGrad_25epochs", "nnUNetTrainerAvaGrad_1000epochs",
    "nnUNetTrainerAvaGrad_demo", "nnUNetTrainerAvaGrad_layerspeed", "nnUNetTrainerAvaGradNoDA_25epochs",
    "nnUNetTrainerCPU_demo", "nnUNetTrainerCPU_smoke",
    "nnUNetTrainerEarlyStopAdam_25epochs", "nnUNetTrainerEarlyStopAdam_50epochs",
    "nnUNetTrainerEarlyStopAdamNoDA_25epochs", "nnUNetTrainerEarlyStopSGD_25epochs",
    "nnUNetTrainerEarlyStopSGDNoDA_25epochs", "nnUNetTrainerSGD_layerspeed",
]

from nnunet_ext.trainers.fourier_mst import (  # noqa: E402
    FourierMSTMixin,
    nnUNetTrainerFourierMST,
    nnUNetTrainerFourierMST_beta0p01,
    nnUNetTrainerFourierMST_beta0p05,
    nnUNetTrainerFourierMST_beta0p1,
    nnUNetTrainerFourierMST_mode2d,
    nnUNetTrainerFourierMST_mode2p5d,
    nnUNetTrainerFourierMST_nmst3,
    nnUNetTrainerFourierMST_random,
    nnUNetTrainerFourierMST_single,
    nnUNetTrainerFourierMST_smoke,
)

__all__ += [
    "FourierMSTMixin",
    "nnUNetTrainerFourierMST",
    "nnUNetTrainerFourierMST_beta0p01",
    "nnUNetTrainerFourierMST_beta0p05",
    "nnUNetTrainerFourierMST_beta0p1",
    "nnUNetTrainerFourierMST_mode2d",
    "nnUNetTrainerFourierMST_mode2p5d",
    "nnUNetTrainerFourierMST_nmst3",
    "nnUNetTrainerFourierMST_random",
    "nnUNetTrainerFourierMST_single",
    "nnUNetTrainerFourierMST_smoke",
]

from nnunet_ext.trainers.catenorm import (
    nnUNetTrainerCateNorm,
    nnUNetTrainerCateNorm_block1,
    nnUNetTrainerCateNorm_block1_demo,
    nnUNetTrainerCateNorm_demo,
    nnUNetTrainerCateNorm_smoke,
    nnUNetTrainerCateNorm_warmup0,
    nnUNetTrainerCateNorm_warmup160,
    nnUNetTrainerCateNorm_warmup500,
    nnUNetTrainerCateNormAvaGrad,
)

__all__ += [
    "nnUNetTrainerCateNorm",
    "nnUNetTrainerCateNormAvaGrad",
    "nnUNetTrainerCateNorm_block1",
    "nnUNetTrainerCateNorm_block1_demo",
    "nnUNetTrainerCateNorm_demo",
    "nnUNetTrainerCateNorm_smoke",
    "nnUNetTrainerCateNorm_warmup0",
    "nnUNetTrainerCateNorm_warmup160",
    "nnUNetTrainerCateNorm_warmup500",
]

from nnunet_ext.trainers.stream import (  # noqa: E402
    StreamTrainerMixin,
    nnUNetTrainerSequential,
    nnUNetTrainerSequential_50epochs,
    nnUNetTrainerSequential_smoke,
)

__all__ += [
    "StreamTrainerMixin",
    "nnUNetTrainerSequential",
    "nnUNetTrainerSequential_50epochs",
    "nnUNetTrainerSequential_smoke",
]

from nnunet_ext.trainers.continual_baselines import (  # noqa: E402
    ContinualRegularizerMixin,
    EWCMixin,
    LwFMixin,
    nnUNetTrainerEWC,
    nnUNetTrainerEWC_50epochs,
    nnUNetTrainerEWC_smoke,
    nnUNetTrainerLwF,
    nnUNetTrainerLwF_50epochs,
    nnUNetTrainerLwF_smoke,
)

__all__ += [
    "ContinualRegularizerMixin",
    "EWCMixin",
    "LwFMixin",
    "nnUNetTrainerEWC",
    "nnUNetTrainerEWC_50epochs",
    "nnUNetTrainerEWC_smoke",
    "nnUNetTrainerLwF",
    "nnUNetTrainerLwF_50epochs",
    "nnUNetTrainerLwF_smoke",
]

from nnunet_ext.trainers.odex import (  # noqa: E402
    ODExMixin,
    nnUNetTrainerDiceEx,
    nnUNetTrainerDiceEx_smoke,
    nnUNetTrainerODEx,
    nnUNetTrainerODEx_50epochs,
    nnUNetTrainerODEx_noHistory,
    nnUNetTrainerODEx_smoke,
    nnUNetTrainerODEx_xiNegInf,
    nnUNetTrainerODEx_xiNegInf_smoke,
)

__all__ += [
    "ODExMixin",
    "nnUNetTrainerDiceEx",
    "nnUNetTrainerDiceEx_smoke",
    "nnUNetTrainerODEx",
    "nnUNetTrainerODEx_50epochs",
    "nnUNetTrainerODEx_noHistory",
    "nnUNetTrainerODEx_smoke",
    "nnUNetTrainerODEx_xiNegInf",
    "nnUNetTrainerODEx_xiNegInf_smoke",
]

from nnunet_ext.trainers.style_curriculum import (  # noqa: E402
    StyleCurriculumMixin,
    nnUNetTrainerStyleCurriculum,
    nnUNetTrainerStyleCurriculum_eps0p1,
    nnUNetTrainerStyleCurriculum_eps0p5,
    nnUNetTrainerStyleCurriculum_finetune,
    nnUNetTrainerStyleCurriculum_finetune_random,
    nnUNetTrainerStyleCurriculum_finetune_rotTTA,
    nnUNetTrainerStyleCurriculum_finetune_rotTTA_smoke,
    nnUNetTrainerStyleCurriculum_finetune_scl,
    nnUNetTrainerStyleCurriculum_histogram,
    nnUNetTrainerStyleCurriculum_intensity,
    nnUNetTrainerStyleCurriculum_n1,
    nnUNetTrainerStyleCurriculum_n5,
    nnUNetTrainerStyleCurriculum_pool2,
    nnUNetTrainerStyleCurriculum_pool8,
    nnUNetTrainerStyleCurriculum_random,
    nnUNetTrainerStyleCurriculum_rotTTA,
    nnUNetTrainerStyleCurriculum_scl,
    nnUNetTrainerStyleCurriculum_smoke,
)

__all__ += [
    "StyleCurriculumMixin",
    "nnUNetTrainerStyleCurriculum",
    "nnUNetTrainerStyleCurriculum_eps0p1",
    "nnUNetTrainerStyleCurriculum_eps0p5",
    "nnUNetTrainerStyleCurriculum_finetune",
    "nnUNetTrainerStyleCurriculum_finetune_random",
    "nnUNetTrainerStyleCurriculum_finetune_rotTTA",
    "nnUNetTrainerStyleCurriculum_finetune_rotTTA_smoke",
    "nnUNetTrainerStyleCurriculum_finetune_scl",
    "nnUNetTrainerStyleCurriculum_histogram",
    "nnUNetTrainerStyleCurriculum_intensity",
    "nnUNetTrainerStyleCurriculum_n1",
    "nnUNetTrainerStyleCurriculum_n5",
    "nnUNetTrainerStyleCurriculum_pool2",
    "nnUNetTrainerStyleCurriculum_pool8",
    "nnUNetTrainerStyleCurriculum_random",
    "nnUNetTrainerStyleCurriculum_rotTTA",
    "nnUNetTrainerStyleCurriculum_scl",
    "nnUNetTrainerStyleCurriculum_smoke",
]

from nnunet_ext.trainers.gin import (  # noqa: E402
    GINIPAMixin,
    GINMixin,
    nnUNetTrainerCateNormGIN,
    nnUNetTrainerCateNormGIN_smoke,
    nnUNetTrainerGIN,
    nnUNetTrainerGIN_smoke,
    nnUNetTrainerGINDA5,
    nnUNetTrainerGINDA5_smoke,
    nnUNetTrainerGINIPA,
    nnUNetTrainerGINIPA_keepBatch,
    nnUNetTrainerGINIPA_smoke,
    nnUNetTrainerStyleCurriculumDA5,
    nnUNetTrainerStyleCurriculumDA5_smoke,
)

__all__ += [
    "GINIPAMixin",
    "GINMixin",
    "nnUNetTrainerCateNormGIN",
    "nnUNetTrainerCateNormGIN_smoke",
    "nnUNetTrainerGIN",
    "nnUNetTrainerGIN_smoke",
    "nnUNetTrainerGINDA5",
    "nnUNetTrainerGINDA5_smoke",
    "nnUNetTrainerGINIPA",
    "nnUNetTrainerGINIPA_keepBatch",
    "nnUNetTrainerGINIPA_smoke",
    "nnUNetTrainerStyleCurriculumDA5",
    "nnUNetTrainerStyleCurriculumDA5_smoke",
]
