"""One reader per public dataset: each finds the cases below a source folder and decodes them on demand."""

from . import darwin, dicom, jsrt, labelme, nlm

READERS = {
    "jsrt": jsrt.find_cases,
    "montgomery": nlm.find_montgomery,
    "shenzhen": nlm.find_shenzhen,
    "darwin": darwin.find_cases,
    "labelme": labelme.find_cases,
    "dicom": dicom.find_cases,
}
