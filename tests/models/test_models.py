import numpy as np
import pytest
import keras

from tfsemiseg.models import backbones
from tfsemiseg.models.discriminator import build_discriminator
from tfsemiseg.models.segmenters import backbone_of, build_segmenter, head_of, is_head_variable


def n_trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_deeplabv2_resnet101_parameter_count_matches_the_reference():
    """Bias-free convolutions (Caffe / DeepLab-v2 original): 44,048,532 trainable parameters,
    BN scale and offset included, of which the ASPP-sum classifier is 4 * (2048*21*9 + 21).
    keras.applications-compatible convolutions (with biases, needed for its ImageNet weights)
    add one bias per conv output channel: 52,672 more."""
    model = build_segmenter("deeplabv2", "resnet101", 21, use_bias=False)
    assert n_trainable(model) == 44_048_532
    head = sum(int(np.prod(v.shape)) for v in model.trainable_variables if is_head_variable(v))
    assert head == 4 * (2048 * 21 * 9 + 21)
    assert n_trainable(build_segmenter("deeplabv2", "resnet101", 21)) == 44_048_532 + 52_672


def test_backbone_matches_keras_applications_layer_for_layer():
    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    model = build_segmenter("deeplabv3plus", "resnet50", 21, output_stride=16)
    for layer in ref.layers:
        if layer.weights:
            assert [w.shape for w in layer.weights] == [w.shape for w in backbone_of(model).get_layer(layer.name).weights]


def test_imagenet_weights_load_from_a_local_file_into_the_dilated_network(tmp_path):
    ref = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(None, None, 3))
    path = str(tmp_path / "resnet50.weights.h5")
    ref.save_weights(path)
    model = build_segmenter("deeplabv2", "resnet50", 5, output_stride=8, backbone_weights=path)
    for name in ("conv1_conv", "conv4_block6_2_conv", "conv5_block3_3_bn"):
        for a, b in zip(ref.get_layer(name).get_weights(), backbone_of(model).get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert backbone_of(model).get_layer("conv4_block1_2_conv").dilation_rate == (2, 2)
    assert backbone_of(model).get_layer("conv5_block1_2_conv").dilation_rate == (4, 4)


def test_no_imagenet_weights_for_tiny():
    with pytest.raises(ValueError, match="No ImageNet weights for backbone"):
        build_segmenter("deeplabv2", "tiny", 5, backbone_weights="imagenet")


@pytest.mark.parametrize("arch,os_", [("deeplabv2", 8), ("deeplabv3plus", 16), ("deeplabv3plus", 8), ("pspnet", 8)])
def test_output_shape_is_input_size_for_odd_sizes(arch, os_):
    model = build_segmenter(arch, "tiny", 7, output_stride=os_)
    out = model(np.random.uniform(0, 255, (2, 65, 47, 3)).astype("float32"))
    assert out.shape == (2, 65, 47, 7) and out.dtype == "float32"


def test_stage_strides():
    model = build_segmenter("deeplabv3plus", "tiny", 3, output_stride=16)
    stages = backbone_of(model)(np.zeros((1, 64, 64, 3)))
    c1, c4, logits = stages[0], stages[3], head_of(model)(stages)
    assert c1.shape[1:3] == (16, 16) and c4.shape[1:3] == (4, 4) and logits.shape[1:3] == (16, 16)
    model = build_segmenter("deeplabv2", "tiny", 3, output_stride=8)
    assert backbone_of(model)(np.zeros((1, 64, 64, 3)))[3].shape == (1, 8, 8, 128)


@pytest.mark.parametrize("arch", ["deeplabv2", "deeplabv3plus", "pspnet"])
@pytest.mark.parametrize("backbone", ["tiny", "small", "efficientnet_lite0"])
def test_segmenter_is_its_backbone_then_its_head(arch, backbone):
    """Every backbone and head: the two halves, run by hand, give the segmenter's logits; the head
    owns every head_* variable and the backbone every other one."""
    import tensorflow as tf
    from tfsemiseg.models.segmenters import upsample

    model = build_segmenter(arch, backbone, 3, output_stride=16, aspp_rates=(1, 2, 3), head_channels=16)
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 40, 3)).astype("float32")
    by_hand = upsample(head_of(model)(backbone_of(model)(x)), tf.constant(x))
    np.testing.assert_allclose(by_hand, model(x), atol=1e-5)
    assert all(is_head_variable(v) for v in head_of(model).trainable_variables)
    assert not any(is_head_variable(v) for v in backbone_of(model).trainable_variables)
    assert len(model.trainable_variables) == (len(head_of(model).trainable_variables)
                                              + len(backbone_of(model).trainable_variables))


def test_freeze_bn_freezes_backbone_batchnorm_only():
    model = build_segmenter("deeplabv3plus", "tiny", 3, freeze_bn=True)
    assert not backbone_of(model).get_layer("conv1_bn").trainable
    assert head_of(model).get_layer("head_aspp_0_bn").trainable


def test_normalization_modes():
    x = np.full((1, 1, 1, 3), 255.0, "float32")
    caffe = backbones.ImageNormalization("caffe")(x).numpy().ravel()
    np.testing.assert_allclose(caffe, [255 - 103.939, 255 - 116.779, 255 - 123.68], rtol=1e-5)
    torch = backbones.ImageNormalization("torch")(x).numpy().ravel()
    np.testing.assert_allclose(torch, [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-5)


def test_segmenter_saves_and_loads(tmp_path):
    model = build_segmenter("deeplabv3plus", "tiny", 4)
    x = np.random.uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(model(x), loaded(x), atol=1e-5)


def test_discriminator_parameter_count_and_output_shape():
    disc = build_discriminator(21)
    assert disc.count_params() == 2_783_169
    out = disc(np.zeros((2, 41, 57, 21), "float32"))
    assert out.shape == (2, 41, 57, 1)


@pytest.mark.parametrize("backbone", ["tiny", "efficientnet_lite0"])
def test_every_endpoint_is_in_the_model(backbone):
    """c2 and c3 feed no head, yet PseudoSeg's hypercolumn and Grad-CAM read them."""
    model = build_segmenter("deeplabv2", backbone, 3, output_stride=16, aspp_rates=(1, 2))
    c1, c2, c3, c4 = backbone_of(model)(np.zeros((1, 64, 64, 3), "float32"))
    assert [c.shape[1] for c in (c1, c2, c3, c4)] == [16, 8, 4, 4]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_batch_norm_equals_keras_batch_norm(dtype):
    """The fused layer gives Keras' outputs, moving statistics and gradients, in training and
    inference mode, and uses TensorFlow's fused op (one op forward, one backward)."""
    import tensorflow as tf
    from tfsemiseg.models.normalization import BatchNormalization

    x = tf.random.stateless_normal([3, 5, 7, 4], seed=[1, 2]) * 3.0 + 1.0
    layers = []
    for cls in (keras.layers.BatchNormalization, BatchNormalization):
        layer = cls(momentum=0.9, epsilon=1e-3, dtype=keras.DTypePolicy("mixed_bfloat16") if dtype == "bfloat16"
                    else "float32")
        layer.build(x.shape)
        layer.gamma.assign([1.0, 2.0, 0.5, -1.0])
        layer.beta.assign([0.0, 1.0, -1.0, 0.5])
        layers.append(layer)
    tol = dict(rtol=0, atol=3e-2) if dtype == "bfloat16" else dict(rtol=1e-5, atol=1e-5)
    results = []
    for layer in layers:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cos(x))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance, layer(x, training=False)])
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(np.asarray(tf.cast(fused_value, tf.float32)),
                                   np.asarray(tf.cast(keras_value, tf.float32)), **tol)
    assert results[1][0].dtype == tf.as_dtype(dtype)

    graph = tf.function(lambda v: tf.gradients(layers[1](v, training=True), v)).get_concrete_function(x).graph
    op_types = {op.type for op in graph.get_operations()}
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= op_types and "SquaredDifference" not in op_types


def test_fused_batch_norm_falls_back_to_keras_for_what_it_cannot_fuse():
    import tensorflow as tf
    from tfsemiseg.models.normalization import BatchNormalization

    layer = BatchNormalization(synchronized=True)
    x = tf.random.normal([2, 3, 3, 2])
    graph = tf.function(lambda v: layer(v, training=True)).get_concrete_function(x).graph
    assert "FusedBatchNormV3" not in {op.type for op in graph.get_operations()}
    flat = BatchNormalization()(tf.random.normal([4, 3]), training=True)  # 2-D: Keras' own path
    assert flat.shape == (4, 3)


def test_dilated_conv_is_one_op_with_keras_results(monkeypatch):
    """Dilated convolutions run as one Conv2D op (no SpaceToBatchND) with Keras' outputs and
    gradients; where dilated gradients are not available they take Keras' path."""
    import tensorflow as tf
    from tfsemiseg.models import convolution

    x = tf.random.stateless_normal([2, 13, 13, 8], seed=[3, 4])
    ours = convolution.Conv2D(5, 3, dilation_rate=3, padding="same")
    ours.build(x.shape)
    reference = keras.layers.Conv2D(5, 3, dilation_rate=3, padding="same")
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())

    def outputs_and_gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.cos(y))
        return [y, *tape.gradient(loss, [x, layer.kernel, layer.bias])]

    for a, b in zip(outputs_and_gradients(ours), outputs_and_gradients(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)

    def op_types(layer):
        return {op.type for op in tf.function(layer).get_concrete_function(x).graph.get_operations()}
    assert "SpaceToBatchND" not in op_types(ours) and "SpaceToBatchND" in op_types(reference)
    strided = convolution.Conv2D(5, 3, strides=2, padding="same")
    assert strided(x).shape == (2, 7, 7, 5)
    monkeypatch.setattr(convolution, "native_dilation_supported", lambda: False)
    assert "SpaceToBatchND" in op_types(ours)


@pytest.mark.parametrize("use_bias", [False, True])
def test_depthwise_conv_computes_in_float32_under_bfloat16_on_a_cpu(use_bias):
    """Under mixed bfloat16 on a CPU the depthwise convolution (whose bfloat16 gradients oneDNN computes
    3x slower than float32's) runs in float32: its output is the float32 convolution of the bfloat16
    input, rounded once; its kernel gradient is float32's. In float32 it is Keras' layer."""
    import tensorflow as tf
    from tfsemiseg.models import convolution

    x = tf.random.stateless_normal([2, 9, 9, 6], seed=[1, 2])
    reference = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=use_bias)
    reference.build(x.shape)
    ours = convolution.DepthwiseConv2D(3, strides=2, padding="same", use_bias=use_bias, dtype="mixed_bfloat16")
    ours.build(x.shape)
    weights = [w + 0.1 for w in reference.get_weights()]  # a nonzero bias
    reference.set_weights(weights)
    ours.set_weights(weights)
    x16 = tf.cast(x, tf.bfloat16)

    def output_and_kernel_gradient(layer, inputs):
        with tf.GradientTape() as tape:
            y = layer(inputs)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        return y, tape.gradient(loss, layer.kernel)

    y, grad = output_and_kernel_gradient(ours, x16)
    assert y.dtype == tf.bfloat16 and grad.dtype == tf.float32
    kernel16 = tf.cast(tf.cast(reference.kernel, tf.bfloat16), tf.float32)
    expected = tf.nn.depthwise_conv2d(tf.cast(x16, tf.float32), kernel16, [1, 2, 2, 1], "SAME")
    if use_bias:
        expected += tf.cast(tf.cast(reference.bias, tf.bfloat16), tf.float32)
    np.testing.assert_array_equal(np.asarray(tf.cast(y, tf.float32)),
                                  np.asarray(tf.cast(tf.cast(expected, tf.bfloat16), tf.float32)))
    _, grad32 = output_and_kernel_gradient(reference, tf.cast(x16, tf.float32))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad32), rtol=0.02, atol=0.05)
    dtypes = {op.get_attr("T") for op in tf.function(ours).get_concrete_function(x16).graph.get_operations()
              if op.type == "DepthwiseConv2dNative"}
    assert dtypes == {tf.float32}
    float32_layer = convolution.DepthwiseConv2D(3, padding="same", use_bias=use_bias)
    float32_layer.build(x.shape)
    float32_layer.set_weights(weights)
    same = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=use_bias)
    same.build(x.shape)
    same.set_weights(weights)
    np.testing.assert_allclose(np.asarray(float32_layer(x)), np.asarray(same(x)), rtol=1e-6, atol=1e-6)


def test_efficientnet_lite_uses_the_float32_depthwise_convolution():
    model = build_segmenter("deeplabv3plus", "efficientnet_lite0", num_classes=3, output_stride=16,
                            backbone_weights="")
    from tfsemiseg.models import convolution

    depthwise = [layer for layer in backbone_of(model).layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert len(depthwise) == 16 and all(isinstance(layer, convolution.DepthwiseConv2D) for layer in depthwise)
