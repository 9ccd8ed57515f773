"""The upload and archive checks: what a file claims against what it is, and app archives
that would escape, explode or hide a symlink, refused before anything is unpacked."""

from __future__ import annotations

import io
import plistlib
import stat
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge_actors import BadInput
from bridge_actors._backends.archives import (
    APP_EXTENSIONS,
    PHOTO_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ArchiveLimits,
    TooLarge,
    app_root,
    bundle_info,
    check_content,
    check_members,
    sniff,
)
from bridge_actors._backends.bundles import unpack_app

LIMITS = ArchiveLimits(max_entries=50, max_bytes=50 * 1024 * 1024, max_ratio=100)
INFO = {
    "CFBundleIdentifier": "com.example.demo",
    "CFBundleName": "Demo",
    "CFBundleShortVersionString": "1.2",
}


def plist(fmt=plistlib.FMT_XML, **values) -> bytes:
    return plistlib.dumps({**INFO, **values}, fmt=fmt)


def zip_of(entries: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            mode = stat.S_IFLNK | 0o777 if name in symlinks else stat.S_IFREG | 0o644
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return out.getvalue()


def infos(data: bytes) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.infolist()


# --- what a file is -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"PK\x03\x04rest", "zip"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"\x89PNG\r\n\x1a\n....", "png"),
        (b"GIF89a....", "gif"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00", "heif"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00", "mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00", "quicktime"),
        (b"\x00\x00\x00\x08wide\x00\x00", "quicktime"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "avi"),
        (b"\x1a\x45\xdf\xa3\x01\x00", "matroska"),
        (b"hello world", None),
        (b"", None),
    ],
)
def test_sniff_names_what_the_bytes_are(head, kind):
    assert sniff(head) == kind


def test_a_file_must_be_what_its_extension_claims():
    assert check_content("photos", "a.JPG", b"\xff\xd8\xff\xe0", PHOTO_EXTENSIONS) == ".jpg"
    assert check_content("videos", "b.mov", b"\x00\x00\x00\x14ftypqt  ", VIDEO_EXTENSIONS) == ".mov"
    with pytest.raises(BadInput, match=r"'x.png': is not a \.png file \(its content is jpeg\)"):
        check_content("photos", "x.png", b"\xff\xd8\xff\xe0", PHOTO_EXTENSIONS)
    with pytest.raises(BadInput, match=r"must be one of \.ipa, \.zip, not '\.exe'"):
        check_content("ipa_file", "app.exe", b"PK\x03\x04", APP_EXTENSIONS)
    with pytest.raises(BadInput, match="is empty"):
        check_content("ipa_file", "app.ipa", b"", APP_EXTENSIONS)


@given(
    st.binary(max_size=80),
    st.sampled_from(sorted({**PHOTO_EXTENSIONS, **VIDEO_EXTENSIONS, **APP_EXTENSIONS})),
)
def test_content_checks_accept_only_matching_bytes(head, extension):
    kinds = {**PHOTO_EXTENSIONS, **VIDEO_EXTENSIONS, **APP_EXTENSIONS}
    try:
        check_content("f", "name" + extension, head, kinds)
    except BadInput as refusal:
        assert refusal.field == "f"
    else:
        assert sniff(head) in kinds[extension]


# --- archives -------------------------------------------------------------------------------


def test_a_zipped_app_and_an_ipa_are_found_by_their_layout():
    zipped = zip_of({"Demo.app/Info.plist": plist(), "Demo.app/Demo": b"\xcf\xfa\xed\xfe"})
    assert app_root(
        "app_bundle", check_members("app_bundle", infos(zipped), LIMITS), ipa=False
    ) == ("Demo.app",)
    ipa = zip_of({"Payload/Demo.app/Info.plist": plist(), "iTunesMetadata.plist": b"x"})
    assert app_root("ipa_file", check_members("ipa_file", infos(ipa), LIMITS), ipa=True) == (
        "Payload",
        "Demo.app",
    )


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"../evil": b"x"}, "escapes the archive with '..'"),
        ({"Demo.app/../../evil": b"x"}, "escapes the archive with '..'"),
        ({"/etc/passwd": b"x"}, "absolute path"),
        ({"C:/evil": b"x"}, "absolute path"),
        ({"a\\..\\b": b"x"}, "backslash"),
        ({"x": b"1", "x/y": b"2"}, "is under a file"),
    ],
)
def test_paths_that_escape_are_refused(entries, message):
    with pytest.raises(BadInput, match=message):
        check_members("app_bundle", infos(zip_of(entries)), LIMITS)


def test_symlinks_empty_archives_and_too_many_entries_are_refused():
    with pytest.raises(BadInput, match="is a symlink"):
        check_members(
            "f", infos(zip_of({"Demo.app/link": b"/etc"}, symlinks=("Demo.app/link",))), LIMITS
        )
    with pytest.raises(BadInput, match="archive is empty"):
        check_members("f", [], LIMITS)
    many = zip_of({f"Demo.app/{n}": b"" for n in range(51)})
    with pytest.raises(TooLarge, match="51 entries; at most 50"):
        check_members("f", infos(many), LIMITS)


def test_a_zip_bomb_by_ratio_and_by_size_is_refused():
    bomb = zip_of({"Demo.app/zeros": bytes(20 * 1024 * 1024)})
    with pytest.raises(TooLarge, match=r"expands .* times; at most 100"):
        check_members("f", infos(bomb), LIMITS)
    with pytest.raises(TooLarge, match="unpacks to more than"):
        check_members("f", infos(bomb), ArchiveLimits(50, 1024 * 1024, 10**6))
    many_small = zip_of({f"Demo.app/{n}": bytes(512 * 1024) for n in range(8)})
    with pytest.raises(TooLarge, match=r"archive expands .* times; at most 100"):
        check_members("f", infos(many_small), LIMITS)


names = st.lists(
    st.text(st.sampled_from("ab./\\:.\x00C"), min_size=1, max_size=12),
    min_size=1,
    max_size=8,
    unique=True,
)


@pytest.mark.filterwarnings("ignore:Duplicate name")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names)
def test_every_accepted_member_lands_inside(entry_names):
    try:
        data = zip_of(dict.fromkeys(entry_names, b"x"))
    except ValueError:
        return  # names zipfile itself cannot write
    try:
        members = check_members("f", infos(data), LIMITS)
    except BadInput as refusal:
        assert refusal.field == "f"
        return
    root = Path("/unpack")
    for member in members:
        target = root.joinpath(*member.parts)
        assert root in target.parents and ".." not in member.parts and "\\" not in str(target)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*INFO, "CFBundleDisplayName"]),
        st.one_of(
            # Lone surrogates cannot be written to a plist at all (UTF-8 and UTF-16 refuse them).
            st.text(st.characters(min_codepoint=32, exclude_categories=["Cs"]), max_size=30),
            st.integers(-(2**63), 2**63 - 1),
        ),
    )
)
def test_bundle_info_reads_only_what_the_plist_says(values):
    for fmt in (plistlib.FMT_XML, plistlib.FMT_BINARY):
        data = plistlib.dumps(values, fmt=fmt)
        try:
            info = bundle_info("f", data)
        except BadInput as refusal:
            assert refusal.field == "f"
        else:
            assert info.bundle_id == values["CFBundleIdentifier"]


def test_bundle_info_from_binary_and_xml_plists():
    for fmt in (plistlib.FMT_XML, plistlib.FMT_BINARY):
        info = bundle_info("f", plist(fmt, CFBundleDisplayName="Demo App"))
        assert (info.bundle_id, info.name, info.version) == ("com.example.demo", "Demo App", "1.2")
    with pytest.raises(BadInput, match="not a readable plist"):
        bundle_info("f", b"<plist><dict><key>x")
    with pytest.raises(BadInput, match="no valid CFBundleIdentifier"):
        bundle_info("f", plistlib.dumps({"CFBundleIdentifier": "../x"}))


def test_unpacking_writes_only_the_app_under_the_target(tmp_path):
    archive = tmp_path / "demo.ipa"
    archive.write_bytes(
        zip_of(
            {
                "Payload/Demo.app/Info.plist": plist(plistlib.FMT_BINARY),
                "Payload/Demo.app/Demo": b"bin",
                "Other/x": b"y",
            }
        )
    )
    target = tmp_path / "out"
    target.mkdir()
    bundle = unpack_app("ipa_file", archive, target, LIMITS, ipa=True)
    assert bundle.path == target.resolve() / "Payload" / "Demo.app"
    assert bundle.info.bundle_id == "com.example.demo"
    assert sorted(p.name for p in bundle.path.iterdir()) == ["Demo", "Info.plist"]
    assert not (target / "Other").exists()
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(BadInput, match="not a readable zip"):
        unpack_app("app_bundle", tmp_path / "bad.zip", target, LIMITS, ipa=False)
