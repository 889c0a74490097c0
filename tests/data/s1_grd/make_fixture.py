"""Regenerate the small Sentinel-1 GRD test product in this folder (see PROVENANCE.md).

Usage: ``python tests/data/s1_grd/make_fixture.py [MEASUREMENT_DIR]`` where MEASUREMENT_DIR holds
``iw-vv.tiff`` and ``iw-vh.tiff`` from rio-tiler-pds (default: the shared data copy).

The product is a chimera, on purpose and documented: pixels and GCPs of one real scene (S1A
2018-07-16, India, descending), manifest and calibration/noise XMLs of another real scene (S1A
2021-08-09, France, ascending), with the LUT line/pixel coordinates rescaled to the pixel grid.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint

sys.path.insert(0, str(Path(__file__).parent))
import _lut_values as lut

HERE = Path(__file__).parent
#: the shared sample data beside the repository (../shared/data, see its README)
DEFAULT_SOURCE = HERE.parents[3] / "shared" / "data" / "earth_search_cogs" / "S1A_IW_GRDH_1SDV_20180716T004042"
SAFE = "S1A_IW_GRDH_1SDV_20210809T173953_20210809T174018_039156_049F13_6FF8.SAFE"
STEM = "s1a-iw-grd-{pol}-20210809t173953-20210809t174018-039156-049f13-{num}"
NUMBERS = {"vv": "001", "vh": "002"}
#: Size of the XMLs' own product (last pixel node 26143, last noise vector line 16675).
XML_SAMPLES, XML_LINES = 26144, 16676
#: Downsampling of the rio-tiler-pds measurement (1280 x 837, itself ~20x below native).
FACTOR = 2

CAL_PIXELS = [*range(0, 26121, 40), 26143]
NOISE_PIXELS = [*range(0, 8721, 40), 8759, *range(8760, 17561, 40), *range(17561, 26122, 40), 26143]
AZ_EXTRA = (385, 386, 2224, 2225, 4065, 4066, 5905, 5906, 7746, 7747, 9586, 9587, 11425, 11426, 13264,
            13265, 15104, 15105, 16675)
AZ_LINES = sorted({*range(0, 16671, 10), *AZ_EXTRA})

HEADER = """  <adsHeader>
    <missionId>S1A</missionId>
    <productType>GRD</productType>
    <polarisation>{POL}</polarisation>
    <mode>IW</mode>
    <swath>IW</swath>
    <startTime>2021-08-09T17:39:53.153776</startTime>
    <stopTime>2021-08-09T17:40:18.152800</stopTime>
    <absoluteOrbitNumber>39156</absoluteOrbitNumber>
    <missionDataTakeId>302867</missionDataTakeId>
    <imageNumber>{num}</imageNumber>
  </adsHeader>
"""

MANIFEST = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Trimmed from the real manifest.safe of the product named by this folder (see PROVENANCE.md). -->
<xfdu:XFDU xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:gml="http://www.opengis.net/gml" \
xmlns:xfdu="urn:ccsds:schema:xfdu:1" xmlns:safe="http://www.esa.int/safe/sentinel-1.0" \
xmlns:s1="http://www.esa.int/safe/sentinel-1.0/sentinel-1" \
xmlns:s1sar="http://www.esa.int/safe/sentinel-1.0/sentinel-1/sar" \
xmlns:s1sarl1="http://www.esa.int/safe/sentinel-1.0/sentinel-1/sar/level-1" \
version="esa/safe/sentinel-1.0/sentinel-1/sar/level-1/grd/standard/iwdp">
  <metadataSection>
    <metadataObject ID="processing" classification="PROVENANCE" category="PDI">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Processing">
        <xmlData>
          <safe:processing name="GRD Post Processing" start="2021-08-09T20:08:52.914621" \
stop="2021-08-09T20:19:58.000000">
            <safe:facility country="France" name="Copernicus S1 Core Ground Segment - TLS" organisation="ESA" \
site="Airbus Defence and Space-Toulouse">
              <safe:software name="Sentinel-1 IPF" version="003.31"/>
            </safe:facility>
          </safe:processing>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="platform" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Platform Description">
        <xmlData>
          <safe:platform>
            <safe:nssdcIdentifier>2014-016A</safe:nssdcIdentifier>
            <safe:familyName>SENTINEL-1</safe:familyName>
            <safe:number>A</safe:number>
            <safe:instrument>
              <safe:familyName abbreviation="SAR">Synthetic Aperture Radar</safe:familyName>
              <safe:extension>
                <s1sarl1:instrumentMode>
                  <s1sarl1:mode>IW</s1sarl1:mode>
                  <s1sarl1:swath>IW</s1sarl1:swath>
                </s1sarl1:instrumentMode>
              </safe:extension>
            </safe:instrument>
          </safe:platform>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="measurementOrbitReference" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Orbit Reference">
        <xmlData>
          <safe:orbitReference>
            <safe:orbitNumber type="start">39156</safe:orbitNumber>
            <safe:orbitNumber type="stop">39156</safe:orbitNumber>
            <safe:relativeOrbitNumber type="start">59</safe:relativeOrbitNumber>
            <safe:relativeOrbitNumber type="stop">59</safe:relativeOrbitNumber>
            <safe:cycleNumber>238</safe:cycleNumber>
            <safe:phaseIdentifier>1</safe:phaseIdentifier>
            <safe:extension>
              <s1:orbitProperties>
                <s1:pass>ASCENDING</s1:pass>
                <s1:ascendingNodeTime>2021-08-09T17:27:46.469908</s1:ascendingNodeTime>
              </s1:orbitProperties>
            </safe:extension>
          </safe:orbitReference>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="generalProductInformation" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="General Product Information">
        <xmlData>
          <s1sarl1:standAloneProductInformation>
            <s1sarl1:instrumentConfigurationID>7</s1sarl1:instrumentConfigurationID>
            <s1sarl1:missionDataTakeID>302867</s1sarl1:missionDataTakeID>
            <s1sarl1:transmitterReceiverPolarisation>VV</s1sarl1:transmitterReceiverPolarisation>
            <s1sarl1:transmitterReceiverPolarisation>VH</s1sarl1:transmitterReceiverPolarisation>
            <s1sarl1:productClass>S</s1sarl1:productClass>
            <s1sarl1:productClassDescription>SAR Standard L1 Product</s1sarl1:productClassDescription>
            <s1sarl1:productComposition>Slice</s1sarl1:productComposition>
            <s1sarl1:productType>GRD</s1sarl1:productType>
            <s1sarl1:productTimelinessCategory>NRT-3h</s1sarl1:productTimelinessCategory>
            <s1sarl1:sliceProductFlag>true</s1sarl1:sliceProductFlag>
            <s1sarl1:segmentStartTime>2021-08-09T17:37:19.453636</s1sarl1:segmentStartTime>
            <s1sarl1:sliceNumber>7</s1sarl1:sliceNumber>
            <s1sarl1:totalSlices>20</s1sarl1:totalSlices>
          </s1sarl1:standAloneProductInformation>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="acquisitionPeriod" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Acquisition Period">
        <xmlData>
          <safe:acquisitionPeriod>
            <safe:startTime>2021-08-09T17:39:53.153776</safe:startTime>
            <safe:stopTime>2021-08-09T17:40:18.152800</safe:stopTime>
            <safe:extension>
              <s1:timeANX>
                <s1:startTimeANX>7.266839e+05</s1:startTimeANX>
                <s1:stopTimeANX>7.516829e+05</s1:stopTimeANX>
              </s1:timeANX>
            </safe:extension>
          </safe:acquisitionPeriod>
        </xmlData>
      </metadataWrap>
    </metadataObject>
    <metadataObject ID="measurementFrameSet" classification="DESCRIPTION" category="DMD">
      <metadataWrap mimeType="text/xml" vocabularyName="SAFE" textInfo="Frame Set">
        <xmlData>
          <safe:frameSet>
            <safe:frame>
              <safe:footPrint srsName="http://www.opengis.net/gml/srs/epsg.xml#4326">
                <gml:coordinates>46.033890,1.512143 46.436539,4.851360 44.938713,5.188996 \
44.536255,1.937196</gml:coordinates>
              </safe:footPrint>
            </safe:frame>
          </safe:frameSet>
        </xmlData>
      </metadataWrap>
    </metadataObject>
  </metadataSection>
</xfdu:XFDU>
"""


def _fmt(values: list[float], digits: int = 4) -> str:
    return " ".join(f"{v:.{digits}f}".rstrip("0").rstrip(".") for v in values)


def _pixels(values: list[int], width: int) -> str:
    return _fmt([p * (width - 1) / (XML_SAMPLES - 1) for p in values])


def _line(value: int, height: int) -> str:
    return _fmt([value * (height - 1) / (XML_LINES - 1)])


def calibration_xml(pol: str, width: int, height: int, lines: tuple[int, ...]) -> str:
    """Calibration annotation with sigmaNought vectors at the given source lines."""
    sigma = lut.CAL_SIGMA.split()
    assert len(sigma) == len(CAL_PIXELS)
    vectors = "".join(
        f"    <calibrationVector>\n      <line>{_line(line, height)}</line>\n"
        f"      <pixel count=\"{len(CAL_PIXELS)}\">{_pixels(CAL_PIXELS, width)}</pixel>\n"
        f"      <sigmaNought count=\"{len(sigma)}\">{' '.join(sigma)}</sigmaNought>\n    </calibrationVector>\n"
        for line in lines)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<calibration>\n'
            + HEADER.format(POL=pol.upper(), num=NUMBERS[pol])
            + "  <calibrationInformation>\n    <absoluteCalibrationConstant>1.000000e+00"
              "</absoluteCalibrationConstant>\n  </calibrationInformation>\n"
            + f'  <calibrationVectorList count="{len(lines)}">\n{vectors}  </calibrationVectorList>\n</calibration>\n')


def noise_xml(pol: str, width: int, height: int, ranges: dict[int, str], azimuth: str | None) -> str:
    """Noise annotation (IPF >= 2.9 layout): range vectors, optionally the IW1 azimuth vector."""
    vectors = ""
    for line, values in ranges.items():
        vals = values.split()
        assert len(vals) == len(NOISE_PIXELS)
        vectors += (f"    <noiseRangeVector>\n      <line>{_line(line, height)}</line>\n"
                    f"      <pixel count=\"{len(vals)}\">{_pixels(NOISE_PIXELS, width)}</pixel>\n"
                    f"      <noiseRangeLut count=\"{len(vals)}\">{' '.join(vals)}</noiseRangeLut>\n"
                    "    </noiseRangeVector>\n")
    text = ('<?xml version="1.0" encoding="UTF-8"?>\n<noise>\n' + HEADER.format(POL=pol.upper(), num=NUMBERS[pol])
            + f'  <noiseRangeVectorList count="{len(ranges)}">\n{vectors}  </noiseRangeVectorList>\n')
    if azimuth is not None:
        vals = azimuth.split()
        assert len(vals) == len(AZ_LINES)
        lines = _fmt([v * (height - 1) / (XML_LINES - 1) for v in AZ_LINES])
        text += ('  <noiseAzimuthVectorList count="1">\n    <noiseAzimuthVector>\n      <swath>IW1</swath>\n'
                 f"      <firstAzimuthLine>0</firstAzimuthLine>\n      <firstRangeSample>0</firstRangeSample>\n"
                 f"      <lastAzimuthLine>{_line(16675, height)}</lastAzimuthLine>\n"
                 f"      <lastRangeSample>{_pixels([8759], width)}</lastRangeSample>\n"
                 f'      <line count="{len(vals)}">{lines}</line>\n'
                 f'      <noiseAzimuthLut count="{len(vals)}">{" ".join(vals)}</noiseAzimuthLut>\n'
                 "    </noiseAzimuthVector>\n  </noiseAzimuthVectorList>\n")
    return text + "</noise>\n"


def downsample(source: Path, target: Path) -> tuple[int, int]:
    """2x2 mean of DN^2 (power), back to uint16 amplitude; GCP coordinates divided by 2."""
    with rasterio.open(source) as src:
        dn = src.read(1).astype(np.float64)
        gcps, gcp_crs = src.gcps
    h, w = (dn.shape[0] // FACTOR) * FACTOR, (dn.shape[1] // FACTOR) * FACTOR
    blocks = dn[:h, :w].reshape(h // FACTOR, FACTOR, w // FACTOR, FACTOR)
    power = (blocks**2).mean(axis=(1, 3))
    nodata = (blocks == 0).any(axis=(1, 3))
    out = np.where(nodata, 0, np.round(np.sqrt(power))).astype(np.uint16)
    new_gcps = [GroundControlPoint(row=g.row / FACTOR, col=g.col / FACTOR, x=g.x, y=g.y, z=g.z, id=g.id)
                for g in gcps]
    profile = {"driver": "GTiff", "dtype": "uint16", "count": 1, "height": out.shape[0], "width": out.shape[1],
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2}
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(out, 1)
        dst.gcps = (new_gcps, gcp_crs)
    return out.shape[1], out.shape[0]


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else DEFAULT_SOURCE
    root = HERE / SAFE
    for sub in ("measurement", "annotation/calibration"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "manifest.safe").write_text(MANIFEST)
    for pol in ("vv", "vh"):
        stem = STEM.format(pol=pol, num=NUMBERS[pol])
        width, height = downsample(source / f"iw-{pol}.tiff", root / "measurement" / f"{stem}.tiff")
        if pol == "vv":
            cal = calibration_xml(pol, width, height, (0, 17343))
            noise = noise_xml(pol, width, height, {0: lut.NOISE_RANGE_VV_LINE0,
                                                   16675: lut.NOISE_RANGE_VV_LINE16675}, lut.NOISE_AZIMUTH_VV_IW1)
        else:
            cal = calibration_xml(pol, width, height, (0,))
            noise = noise_xml(pol, width, height, {0: lut.NOISE_RANGE_VH_LINE0}, None)
        (root / "annotation" / "calibration" / f"calibration-{stem}.xml").write_text(cal)
        (root / "annotation" / "calibration" / f"noise-{stem}.xml").write_text(noise)
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
