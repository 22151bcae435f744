from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LinkAdvert(_message.Message):
    __slots__ = ("link_id", "peer", "up", "available_out_bytes")
    LINK_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    UP_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_OUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    link_id: str
    peer: str
    up: bool
    available_out_bytes: int
    def __init__(self, link_id: _Optional[str] = ..., peer: _Optional[str] = ..., up: _Optional[bool] = ..., available_out_bytes: _Optional[int] = ...) -> None: ...

class LinkStateAdvert(_message.Message):
    __slots__ = ("origin", "sequence", "links", "signature", "origin_certificate")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    origin: str
    sequence: int
    links: _containers.RepeatedCompositeFieldContainer[LinkAdvert]
    signature: bytes
    origin_certificate: bytes
    def __init__(self, origin: _Optional[str] = ..., sequence: _Optional[int] = ..., links: _Optional[_Iterable[_Union[LinkAdvert, _Mapping]]] = ..., signature: _Optional[bytes] = ..., origin_certificate: _Optional[bytes] = ...) -> None: ...

class AdvertAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LinkStateAdverts(_message.Message):
    __slots__ = ("adverts",)
    ADVERTS_FIELD_NUMBER: _ClassVar[int]
    adverts: _containers.RepeatedCompositeFieldContainer[LinkStateAdvert]
    def __init__(self, adverts: _Optional[_Iterable[_Union[LinkStateAdvert, _Mapping]]] = ...) -> None: ...

class KeyRange(_message.Message):
    __slots__ = ("block_id", "offset_bytes", "length_bytes")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    LENGTH_BYTES_FIELD_NUMBER: _ClassVar[int]
    block_id: str
    offset_bytes: int
    length_bytes: int
    def __init__(self, block_id: _Optional[str] = ..., offset_bytes: _Optional[int] = ..., length_bytes: _Optional[int] = ...) -> None: ...

class RelayHop(_message.Message):
    __slots__ = ("relay_id", "key_id", "master_sae", "slave_saes", "source", "destination", "path", "hop_index", "share_index", "share_count", "key_bytes", "pad", "ciphertext", "tag")
    RELAY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MASTER_SAE_FIELD_NUMBER: _ClassVar[int]
    SLAVE_SAES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HOP_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARE_COUNT_FIELD_NUMBER: _ClassVar[int]
    KEY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAD_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    relay_id: str
    key_id: str
    master_sae: str
    slave_saes: _containers.RepeatedScalarFieldContainer[str]
    source: str
    destination: str
    path: _containers.RepeatedScalarFieldContainer[str]
    hop_index: int
    share_index: int
    share_count: int
    key_bytes: int
    pad: _containers.RepeatedCompositeFieldContainer[KeyRange]
    ciphertext: bytes
    tag: bytes
    def __init__(self, relay_id: _Optional[str] = ..., key_id: _Optional[str] = ..., master_sae: _Optional[str] = ..., slave_saes: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ..., destination: _Optional[str] = ..., path: _Optional[_Iterable[str]] = ..., hop_index: _Optional[int] = ..., share_index: _Optional[int] = ..., share_count: _Optional[int] = ..., key_bytes: _Optional[int] = ..., pad: _Optional[_Iterable[_Union[KeyRange, _Mapping]]] = ..., ciphertext: _Optional[bytes] = ..., tag: _Optional[bytes] = ...) -> None: ...

class RelayResult(_message.Message):
    __slots__ = ("delivered", "error")
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    delivered: bool
    error: str
    def __init__(self, delivered: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class RelayHops(_message.Message):
    __slots__ = ("hops",)
    HOPS_FIELD_NUMBER: _ClassVar[int]
    hops: _containers.RepeatedCompositeFieldContainer[RelayHop]
    def __init__(self, hops: _Optional[_Iterable[_Union[RelayHop, _Mapping]]] = ...) -> None: ...

class RelayResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RelayResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RelayResult, _Mapping]]] = ...) -> None: ...
