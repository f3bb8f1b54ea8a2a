"""Bazel's own dependencies, downloaded online or replaced by local stand-ins offline.

Bazel 4's @bazel_tools needs @rules_cc and @remote_coverage_tools, which Bazel
downloads on first use. WORKSPACE declares them with `bazel_dependency`, which
does the same download unless the build runs with `--config=offline`
(`--repo_env=DPC_BAZEL_OFFLINE=1`); then the repository is this directory's
stand-in of the same name. (`--override_repository` would need an absolute path,
which a checked-in .bazelrc cannot give.)
"""

_OFFLINE_ENV = "DPC_BAZEL_OFFLINE"

def _bazel_dependency_impl(repository_ctx):
    if repository_ctx.os.environ.get(_OFFLINE_ENV, "") == "1":
        here = repository_ctx.path(Label("//third_party/bazel:README.md")).dirname
        stand_in = here.get_child(repository_ctx.attr.offline_stand_in)
        if not stand_in.exists:
            fail("No offline stand-in for @%s at %s." % (repository_ctx.name, stand_in))
        for child in stand_in.readdir():
            repository_ctx.symlink(child, child.basename)
    else:
        repository_ctx.download_and_extract(
            url = repository_ctx.attr.urls,
            sha256 = repository_ctx.attr.sha256,
            stripPrefix = repository_ctx.attr.strip_prefix,
        )

bazel_dependency = repository_rule(
    implementation = _bazel_dependency_impl,
    attrs = {
        "urls": attr.string_list(mandatory = True),
        "sha256": attr.string(mandatory = True),
        "strip_prefix": attr.string(),
        "offline_stand_in": attr.string(
            mandatory = True,
            doc = "Directory next to this file used instead when offline.",
        ),
    },
    environ = [_OFFLINE_ENV],
    doc = "An http_archive that is a local stand-in under --repo_env=DPC_BAZEL_OFFLINE=1.",
)

def dpc_bazel_dependencies():
    """Declares @rules_cc and @remote_coverage_tools as Bazel 4.2.3 itself does."""

    # Same archive as Bazel 4.2.3's built-in WORKSPACE suffix (cc_configure, jdk).
    bazel_dependency(
        name = "rules_cc",
        sha256 = "d0c573b94a6ef20ef6ff20154a23d0efcb409fb0e1ff0979cec318dfe42f0cdd",
        strip_prefix = "rules_cc-b1c40e1de81913a3c40e5948f78719c28152486d",
        urls = [
            "https://mirror.bazel.build/github.com/bazelbuild/rules_cc/archive/b1c40e1de81913a3c40e5948f78719c28152486d.zip",
            "https://github.com/bazelbuild/rules_cc/archive/b1c40e1de81913a3c40e5948f78719c28152486d.zip",
        ],
        offline_stand_in = "rules_cc",
    )

    # Same archive as Bazel 4.2.3's built-in WORKSPACE suffix (coverage).
    bazel_dependency(
        name = "remote_coverage_tools",
        sha256 = "cd14f1cb4559e4723e63b7e7b06d09fcc3bd7ba58d03f354cdff1439bd936a7d",
        urls = [
            "https://mirror.bazel.build/bazel_coverage_output_generator/releases/coverage_output_generator-v2.5.zip",
        ],
        offline_stand_in = "remote_coverage_tools",
    )
