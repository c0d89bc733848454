"""Load NeMo ``.nemo`` checkpoints of QuartzNet and Citrinet into fctc models.

A ``.nemo`` file is a tar archive holding ``model_config.yaml`` (the model's
hyperparameters), ``model_weights.ckpt`` (its ``state_dict``) and, for sub-word models, a
sentencepiece ``tokenizer.model``. :func:`load_nemo` reads them the way thunder-speech's
``load_quartznet_checkpoint`` / ``load_citrinet_checkpoint`` do, in three steps (``load.py``):

* parse: ``archive.py`` reads the archive in memory (weights with ``weights_only=True``),
  ``config.py`` the config's sections and the front end (``preprocessor``), and one
  compatibility piece per architecture (``quartznet.py``, ``citrinet.py``; the shared block
  checks are in ``compatibility.py``) turns NeMo's ``encoder.jasper`` block list into the
  keyword arguments of the fctc encoder builder;
* build: the :class:`fctc.models.Architecture` builds the model, and ``vocabulary.py`` the
  vocabulary (``labels`` with the blank last; sub-word spellings fixed by :func:`fix_vocab`);
* map weights: ``weights.py`` renames NeMo's keys to thunder's (:func:`nemo_key_to_fctc`),
  checks every tensor against the model and fills it.
"""

from .archive import CONFIG_NAME as CONFIG_NAME
from .archive import WEIGHTS_NAME as WEIGHTS_NAME
from .archive import NemoArchive as NemoArchive
from .archive import read_nemo_archive as read_nemo_archive
from .compatibility import Compatibility as Compatibility
from .config import front_end_config as front_end_config
from .load import ARCHITECTURES as ARCHITECTURES
from .load import COMPATIBILITY as COMPATIBILITY
from .load import NemoCheckpoint as NemoCheckpoint
from .load import NemoModel as NemoModel
from .load import detect_architecture as detect_architecture
from .load import load_nemo as load_nemo
from .load import parse_model as parse_model
from .vocabulary import fix_vocab as fix_vocab
from .vocabulary import nemo_vocabulary as nemo_vocabulary
from .weights import map_weights as map_weights
from .weights import nemo_key_to_fctc as nemo_key_to_fctc
